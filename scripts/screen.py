"""Screen stimuli: which clean clips does a model hear? `python scripts/screen.py --pairs-file english --tts hibari`
is `wpatch screen ...` (see `wpatch.stimuli_commands.screen`)."""

from wpatch.stimuli_commands import screen as main

if __name__ == "__main__":
    main()
