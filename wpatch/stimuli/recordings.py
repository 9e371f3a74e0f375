"""Natural recordings of single words, one `Recording` each (the manifest both folder readers fill), and the pairs
file their pairs make.

A reader (`wpatch.stimuli.pattern_folder`: a labelled folder read by a file-name pattern;
`wpatch.stimuli.soundthemes`: translation-aligned word lists) lists a corpus's recordings and pairs them; a pair
of two recordings becomes a pairs-file row whose sides name the recording, the word, its language, its speaker
(and accent and take where the corpus says), each recording heard whole.
"""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from wpatch.stimuli.corpora import seconds

SIDE_COLUMNS = ["audio", "speaker", "accent", "take"]
FIRST = ["pair_id", "word_a", "word_b", "category", "lang_a", "lang_b"]
LAST = ["concept", "corpus", "licence"]


@dataclass(frozen=True)
class Recording:
    """One recording of one word: its file (`path`, any format soundfile decodes, heard whole), the `word` as
    written, its `language`, who says it (`speaker`, with their `accent` where the corpus says), which of the
    speaker's recordings of the word it is (`take`), the `concept` it names (shared by its translations; "" = the
    word), and the `corpus` and `licence` it comes from."""

    path: Path
    word: str
    language: str
    speaker: str
    concept: str = ""
    take: str = ""
    accent: str = ""
    corpus: str = ""
    licence: str = ""


@dataclass(frozen=True)
class RecordingPair:
    """Two recordings patched into each other, and the pair's `category` (e.g. `translation`; "" = none)."""

    a: Recording
    b: Recording
    category: str = ""


def decodable(recording: Recording) -> Recording:
    """The recording, refused in one line naming its file where soundfile cannot decode it."""
    seconds(recording.path)
    return recording


def pairs_table(pairs: list[RecordingPair], prefix: str = "n") -> pd.DataFrame:
    """The pairs file of these pairs (ids `{prefix}00000`, ...), each side its recording heard whole; `concept` is
    side a's (a translation pair's two sides share it)."""
    rows = []
    for pair in pairs:
        row = {"word_a": pair.a.word, "word_b": pair.b.word, "category": pair.category}
        row |= {"lang_a": pair.a.language, "lang_b": pair.b.language}
        for letter, recording in (("a", pair.a), ("b", pair.b)):
            row |= {
                f"audio_{letter}": str(recording.path),
                f"speaker_{letter}": recording.speaker,
                f"accent_{letter}": recording.accent,
                f"take_{letter}": recording.take,
            }
        rows.append(row | {"concept": pair.a.concept, "corpus": pair.a.corpus, "licence": pair.a.licence})
    table = pd.DataFrame(rows)
    table.insert(0, "pair_id", [f"{prefix}{i:05d}" for i in range(len(table))])
    sides = [f"{column}_{letter}" for letter in "ab" for column in SIDE_COLUMNS]
    return table.reindex(columns=FIRST + sides + LAST).fillna("")
