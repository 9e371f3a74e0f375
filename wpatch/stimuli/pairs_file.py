"""Pairs tables: read and check them, and turn each pair into patching items (source into target).

A pairs file is a CSV with `word_a`, `word_b` and optionally `pair_id`, `category`, `audio_a`, `audio_b`
(recordings, relative to the CSV's folder) and `lang_a`, `lang_b` (default `en`).
"""

import logging
from importlib.resources import files
from pathlib import Path

import pandas as pd
import soundfile

from wpatch.errors import WpatchError
from wpatch.text import normalise

DATA = Path(str(files("wpatch") / "data"))
PACKAGED = {  # names that --data.pairs_file accepts besides paths
    "starter": DATA / "starter_pairs.csv",  # 64 English pairs
    "english": DATA / "english_pairs.csv",  # 869 English pairs (Experiment A)
    "english_heard": DATA / "english_heard_pairs.csv",  # 869 English pairs chosen by what tiny.en hears (hibari)
    "english_spanish": DATA / "english_spanish_pairs.csv",  # 162 English-Spanish pairs (Experiment B)
}
REQUIRED = ("word_a", "word_b")
ITEM_COLUMNS = [
    "item_id",
    "pair_id",
    "direction",
    "category",
    "source_word",
    "target_word",
    "source_lang",
    "target_lang",
    "source_audio",
    "target_audio",
]


MAX_SECONDS = 30.0  # Whisper hears the first 30 s of a clip


def pairs_path(path: str | Path | None) -> Path:
    """The CSV behind a --data.pairs_file value: a path or a packaged set's name (None: starter)."""
    return PACKAGED.get(str(path), Path(path)) if path else PACKAGED["starter"]


def recording_seconds(path: Path) -> float:
    """Length of a recording from its header (0 when soundfile cannot tell; loading it reports why)."""
    try:
        return soundfile.info(str(path)).duration
    except Exception:
        return 0.0


def read_pairs(path: str | Path | None = None, limit: int | None = None) -> pd.DataFrame:
    """The checked pairs table, first `limit` rows; `path` is a CSV or a packaged set's name (None: starter)."""
    path = pairs_path(path)
    if not path.is_file():
        raise WpatchError(
            f"pairs file {path} does not exist; pass a CSV with columns word_a,word_b or one of {', '.join(PACKAGED)}"
        )
    try:
        pairs = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as error:
        raise WpatchError(
            f"pairs file {path} is not a readable CSV ({error}); save it as comma-separated UTF-8"
        ) from None
    missing = [c for c in REQUIRED if c not in pairs.columns]
    if missing:
        raise WpatchError(f"pairs file {path} lacks column {missing[0]!r}; its header must name word_a and word_b")
    if limit is not None:
        if limit < 1:
            raise WpatchError(f"row limit {limit} leaves no pairs; give a limit of 1 or more, or none")
        pairs = pairs.head(limit)
    if pairs.empty:
        raise WpatchError(f"pairs file {path} has no rows; add at least one word_a,word_b row")
    pairs = pairs.copy()
    for column, default in (
        ("word_a", ""),
        ("word_b", ""),
        ("category", ""),
        ("audio_a", ""),
        ("audio_b", ""),
        ("lang_a", "en"),
        ("lang_b", "en"),
    ):
        values = pairs[column].str.strip() if column in pairs.columns else pd.Series("", index=pairs.index)
        pairs[column] = values.replace("", default)
    if "pair_id" not in pairs.columns:
        pairs["pair_id"] = [f"p{i:05d}" for i in range(len(pairs))]
    for index, row in pairs.iterrows():
        line = index + 2  # header is line 1
        for side in ("a", "b"):
            if not row[f"word_{side}"]:
                raise WpatchError(f"pairs file {path} line {line}: empty word_{side}; fill it in or drop the row")
            if not normalise(row[f"word_{side}"]):
                raise WpatchError(
                    f"pairs file {path} line {line}: word_{side} {row[f'word_{side}']!r} has no letters or digits, so "
                    "no transcript can match it; give a word"
                )
            if row[f"audio_{side}"]:
                audio = Path(row[f"audio_{side}"])
                audio = audio if audio.is_absolute() else path.parent / audio
                if audio.is_dir():
                    raise WpatchError(
                        f"pairs file {path} line {line}: audio_{side} {audio} is a directory, not an audio file; give "
                        "the recording's own path (wav, flac or mp3)"
                    )
                if not audio.is_file():
                    raise WpatchError(
                        f"pairs file {path} line {line}: audio_{side} {audio} does not exist; fix the path or leave "
                        "it empty to synthesise"
                    )
                seconds = recording_seconds(audio)
                if seconds > MAX_SECONDS:
                    raise WpatchError(
                        f"pairs file {path} line {line}: audio_{side} {audio} is {seconds:.1f} s long and Whisper "
                        f"hears only the first {MAX_SECONDS:.0f} s; trim it to the word"
                    )
                pairs.at[index, f"audio_{side}"] = str(audio.resolve())
    stimulus = ["word_a", "word_b", "lang_a", "lang_b", "audio_a", "audio_b"]
    repeats = pairs.duplicated(stimulus)
    if repeats.any():
        index = repeats.idxmax()
        first = pairs.index[(pairs[stimulus] == pairs.loc[index, stimulus]).all(axis=1)][0]
        raise WpatchError(
            f"pairs file {path} line {index + 2} repeats line {first + 2} "
            f"({pairs.at[index, 'word_a']},{pairs.at[index, 'word_b']}); drop the duplicate row"
        )
    if pairs["pair_id"].duplicated().any():
        dup = pairs["pair_id"][pairs["pair_id"].duplicated()].iloc[0]
        raise WpatchError(f"pairs file {path}: pair_id {dup!r} appears twice; make pair ids unique")
    return pairs.reset_index(drop=True)


log = logging.getLogger(__name__)


def first_use(pairs: pd.DataFrame, word: str, lang: str, audio: str) -> tuple[int, str]:
    """The pairs-file line and column where a clip is first used: its recording's audio_a / audio_b or, for a
    synthesised clip, the word_a / word_b of that word and language without a recording."""
    for index, row in pairs.iterrows():
        for side in ("a", "b"):
            if audio and row[f"audio_{side}"] == audio:
                return index + 2, f"audio_{side}"
            if not audio and (row[f"word_{side}"], row[f"lang_{side}"], row[f"audio_{side}"]) == (word, lang, ""):
                return index + 2, f"word_{side}"
    return 0, ""


def silent_clips(pairs: pd.DataFrame, path, clips: list[tuple], reasons: list[str | None], tell: bool = True) -> list:
    """The clips without speech (`reasons[i]` from `audio.no_speech`; `clips[i]` is (word, lang, recording, voice,
    file)), each with the pairs-file line and column that first uses it, and told (`tell`) in one warning
    line each. Their items still run; the list goes to summary.json (`silent_clips`)."""
    found = []
    for (word, lang, audio, voice, file), reason in zip(clips, reasons):
        if reason is None:
            continue
        line, column = first_use(pairs, word, lang, audio)
        found.append(
            {"file": str(file), "line": line, "column": column, "word": word, "voice": voice, "reason": reason}
        )
        if tell:
            what = f"{column} {file}" if audio else f"{column} {word!r} spoken by {voice} ({file})"
            fix = "record it again or drop the row" if audio else "check the word, or speak it with another --data.tts"
            log.warning(
                f"wpatch: warning: pairs file {path} line {line}: {what} has no speech: it {reason}; the run goes on "
                "with it "
                f"(summary.json lists it under silent_clips); {fix}"
            )
    return found


def patch_items(pairs: pd.DataFrame, bidirectional: bool = True) -> pd.DataFrame:
    """One row per patching item: word A's states into word B's run (`a->b`), and the reverse if bidirectional."""
    directions = [("a", "b")] + ([("b", "a")] if bidirectional else [])
    rows = []
    for _, pair in pairs.iterrows():
        for src, tgt in directions:
            rows.append(
                {
                    "pair_id": pair["pair_id"],
                    "direction": f"{src}->{tgt}",
                    "category": pair["category"],
                    "source_word": pair[f"word_{src}"],
                    "target_word": pair[f"word_{tgt}"],
                    "source_lang": pair[f"lang_{src}"],
                    "target_lang": pair[f"lang_{tgt}"],
                    "source_audio": pair[f"audio_{src}"],
                    "target_audio": pair[f"audio_{tgt}"],
                }
            )
    items = pd.DataFrame(rows)
    items.insert(0, "item_id", range(len(items)))
    return items[ITEM_COLUMNS]
