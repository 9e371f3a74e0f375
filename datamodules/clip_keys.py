"""What makes a clip of a run (`ClipKey`), and the clip each side of a pair is heard in (`clip_key`): items that
share a key share the clip, made and read once."""

from typing import NamedTuple

from wpatch.sides import Pair, Side


class ClipKey(NamedTuple):
    """What makes a clip: its word and language, the recording (or "" and the voice that speaks it), the word's
    span in the recording ("" for a whole recording or a synthesised clip), the text it is heard in (`carrier`: the
    carrier sentence, or a recorded word's context, `{}` for the word; "" alone) and, for a recorded word in its
    context, the clip around it (seconds of the recording; "" otherwise)."""

    word: str
    lang: str
    audio: str
    voice: str
    start: str
    end: str
    carrier: str
    context_start: str
    context_end: str


def clip_key(side: Side, pair: Pair, voice: str) -> ClipKey:
    """The clip a side is heard in: a recording has no voice; its text is its context or the pair's carrier."""
    return ClipKey(
        side.word,
        side.lang,
        side.audio,
        "" if side.audio else voice,
        side.start,
        side.end,
        side.heard_in(pair.carrier),
        side.context_start,
        side.context_end,
    )
