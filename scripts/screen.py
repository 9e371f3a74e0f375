"""Screen stimuli: which clean clips does a model hear? `python scripts/screen.py --pairs-file english --tts hibari`
is `wpatch screen ...` (see `wpatch.cli.screen`)."""

from wpatch.cli import screen as main

if __name__ == "__main__":
    main()
