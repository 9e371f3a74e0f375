"""A voice chosen per word (`--data.tts best`): each clip is spoken by the first voice of a fixed, ordered list of
offline voices whose clip of it the run's model hears (`wpatch.stimuli.screening`).

The list is tried in order, so the choice depends only on the word, its language, its carrier sentence, the
model and the voices' (seeded, byte-reproducible) clips: the same every time. A clip that no voice makes heard is
spoken by the list's first voice and reported (`VoiceChoice.unheard`). Choosing by recognition conditions every
measure on clean recognition: see docs/stimuli.md.
"""

from collections.abc import Callable
from dataclasses import dataclass

from wpatch.errors import WpatchError

BEST = "best"
# hibari first (the default voice, and the fastest), then the Kokoro speakers by how many of 40 isolated words
# tiny.en hears (docs/stimuli.md, "Which clips does the model hear?"); Spanish by base on 40 Spanish words
CANDIDATES = {
    "en": (
        "hibari",
        "kokoro:am_adam",
        "kokoro:af_sarah",
        "kokoro:af_nicole",
        "kokoro:am_michael",
        "kokoro:af_heart",
        "kokoro:af_bella",
        "kokoro:bm_lewis",
    ),
    "es": ("kokoro:em_alex", "kokoro:ef_dora", "kokoro:em_santa"),
}


@dataclass(frozen=True)
class Text:
    """What one chosen clip says: its word, language and carrier sentence ("" = the word alone)."""

    word: str
    lang: str = "en"
    carrier: str = ""


@dataclass(frozen=True)
class VoiceChoice:
    """The voice each text is spoken by (`voices`, in the texts' order), whether the model hears it (`heard`),
    and the candidates each language had."""

    texts: list[Text]
    voices: list[str]
    heard: list[bool]
    candidates: dict[str, tuple[str, ...]]

    @property
    def unheard(self) -> list[Text]:
        """The texts that no candidate voice makes heard (spoken by their language's first candidate)."""
        return [text for text, heard in zip(self.texts, self.heard) if not heard]

    def record(self) -> dict:
        """What summary.json keeps of the choice (`voice_choice`)."""
        by_voice = {voice: self.voices.count(voice) for voice in dict.fromkeys(self.voices)}
        return {
            "candidates": {lang: list(voices) for lang, voices in self.candidates.items()},
            "clips": len(self.texts),
            "clips_heard": sum(self.heard),
            "clips_by_voice": by_voice,
            "unheard": [f"{text.word} ({text.lang})" for text in self.unheard],
        }


def check_best(speaker: str) -> bool:
    """Whether a `--data.tts` entry asks for the per-word choice (`best`); `best:VOICE` is refused."""
    name, colon, rest = speaker.partition(":")
    if name != BEST:
        return False
    if colon:
        raise WpatchError(
            f"--data.tts {speaker!r}: best takes no voice (it chooses among {', '.join(CANDIDATES['en'])}); "
            "use best, or name one voice such as kokoro:am_adam"
        )
    return True


def choose_voices(
    texts: list[Text], heard_with: Callable[[str, list[Text]], list[bool]], candidates: dict = CANDIDATES
) -> VoiceChoice:
    """The first candidate voice of each text's language whose clip the model hears: `heard_with(voice, texts)`
    says which of these texts' clips spoken by `voice` the model hears. Each round asks every voice of that rank
    once, about the texts still without a voice; a text no voice makes heard gets its language's first voice."""
    missing = sorted({text.lang for text in texts} - set(candidates))
    if missing:
        raise WpatchError(
            f"--data.tts best has no voices for language {missing[0]!r} (it speaks {', '.join(candidates)}); "
            "name a speaker that speaks it, e.g. --data.tts espeak with --data.voices"
        )
    voices: list[str | None] = [None] * len(texts)
    for rank in range(max((len(candidates[text.lang]) for text in texts), default=0)):
        asked: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            if voices[i] is None and rank < len(candidates[text.lang]):
                asked.setdefault(candidates[text.lang][rank], []).append(i)
        for voice, indices in asked.items():
            for i, heard in zip(indices, heard_with(voice, [texts[i] for i in indices])):
                if heard:
                    voices[i] = voice
    heard = [voice is not None for voice in voices]
    chosen = [voice or candidates[text.lang][0] for voice, text in zip(voices, texts)]
    used = {text.lang: candidates[text.lang] for text in texts}
    return VoiceChoice(texts, chosen, heard, used)
