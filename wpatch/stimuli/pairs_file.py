"""Pairs tables: read and check them, and turn each pair into patching items (source into target).

A pairs file is a CSV with `word_a`, `word_b` and optionally `pair_id`, `category`, `audio_a`, `audio_b`
(recordings, relative to the CSV's folder), `lang_a`, `lang_b` (default `en`), and for words cut from longer
recordings (`wpatch stimuli` writes these): `start_a`, `end_a`, `start_b`, `end_b` (the word's span in its
recording, seconds), `speaker_a`, `speaker_b`, `corpus` and `licence` (carried into every predictions row).
`carrier` (e.g. `say {} again`) has synthesised words spoken inside that sentence (`wpatch.stimuli.carriers`).
A recorded word heard in its recording's context (`wpatch.stimuli.contexts`; `wpatch stimuli` writes these):
`context_a` (the clip's words, `{}` for the word: the carrier of natural speech), `context_start_a`,
`context_end_a` (the clip: seconds of the recording around the span; empty: the whole recording), and for b.
The columns are the fields of the records of `wpatch.sides` (`Side`, `Pair`); `patch_items` parses each checked
row into them once.
"""

import logging
import math
import warnings
from importlib.resources import files
from pathlib import Path

import pandas as pd
import soundfile

from wpatch.errors import WpatchError, inline
from wpatch.sides import file_columns, pair_of, stimulus_columns
from wpatch.text import before, normalise, scored_word, tokenizer_for, written_tokens

DATA = Path(str(files("wpatch") / "data"))
PACKAGED = {  # names that --data.pairs_file accepts besides paths
    "starter": DATA / "starter_pairs.csv",  # 64 English pairs
    "english": DATA / "english_pairs.csv",  # 869 English pairs (Experiment A)
    "english_heard": DATA / "english_heard_pairs.csv",  # 869 English pairs chosen by what tiny.en hears (hibari)
    "english_spanish": DATA / "english_spanish_pairs.csv",  # 162 English-Spanish pairs (Experiment B)
}
REQUIRED = ("word_a", "word_b")


MAX_SECONDS = 30.0  # Whisper hears the first 30 s of a clip


def readable_path(path: Path) -> bool:
    """The system can look the path up (not too long, no character it refuses)."""
    try:
        path.exists()
    except (OSError, ValueError):
        return False
    return True


def pairs_path(path: str | Path | None) -> Path:
    """The CSV behind a --data.pairs_file value: a path or a packaged set's name (None: starter)."""
    return PACKAGED.get(str(path), Path(path)) if path else PACKAGED["starter"]


def recording_seconds(path: Path) -> float:
    """Length of a recording from its header (0 when soundfile cannot tell; loading it reports why)."""
    try:
        return soundfile.info(str(path)).duration
    except Exception:
        return 0.0


def check_span(where: str, start: str | float, end: str | float, seconds: float, names=("start", "end")) -> None:
    """Refuse a word span (`names`: what the file calls its start and end) that is not two finite numbers, is
    empty, lies outside its recording (`seconds` long, 0 when it cannot be decoded) or is longer than Whisper hears;
    `where` names the file, line and recording."""
    try:
        begin, stop = float(start), float(end)
    except ValueError:
        begin = stop = math.nan
    if not (math.isfinite(begin) and math.isfinite(stop)):
        raise WpatchError(
            f"{where}: span {names[0]}={start!r} {names[1]}={end!r} is not two numbers; give both, in seconds"
        )
    if not seconds:
        raise WpatchError(f"{where} cannot be decoded; convert it to wav or flac (e.g. ffmpeg -i in.opus out.wav)")
    if stop <= begin:
        raise WpatchError(f"{where}: the span {begin:g}-{stop:g} s is empty; {names[1]} must be after {names[0]}")
    if begin < 0 or stop > seconds + 1e-3:
        raise WpatchError(
            f"{where}: the span {begin:g}-{stop:g} s lies outside the recording (0-{seconds:.3f} s); fix the span"
        )
    if stop - begin > MAX_SECONDS:
        raise WpatchError(
            f"{where}: the span {begin:g}-{stop:g} s is longer than the {MAX_SECONDS:.0f} s Whisper hears; shorten it"
        )


def placeholder_once(text: str) -> bool:
    """The text has exactly one `{}` and no other brace."""
    return text.count("{}") == text.count("{") == text.count("}") == 1


def check_carrier(path: Path, line: int, row: pd.Series) -> None:
    """Refuse a carrier sentence without exactly one `{}`, or given for a recorded word (a recording is spoken as
    it is: give its span instead)."""
    carrier = row["carrier"]
    if not placeholder_once(carrier):
        raise WpatchError(
            f"pairs file {path} line {line}: carrier {row['carrier']!r} needs exactly one {{}} where the word goes, "
            "e.g. 'say {} again'"
        )
    for side in ("a", "b"):
        if row[f"audio_{side}"]:
            raise WpatchError(
                f"pairs file {path} line {line}: a carrier sentence is spoken by the voice, but audio_{side} is a "
                "recording; drop the carrier or the recording"
            )


def check_context(path: Path, line: int, side: str, row: pd.Series, seconds: float) -> tuple[str, str]:
    """Refuse a recorded word's context (`context_<side>`, `context_start_<side>`, `context_end_<side>`) without
    its span, without exactly one `{}`, or whose clip is not two numbers, lies outside the recording (`seconds`
    long), does not hold the span or is longer than Whisper hears; the clip's (start, end) as given, the whole
    recording where both are empty."""
    where = f"pairs file {path} line {line}: context_{side} {row[f'context_{side}']!r}"
    if not row[f"start_{side}"]:
        raise WpatchError(
            f"{where} is a recording's words around its word, but audio_{side} has no span start_{side}/end_{side}; "
            "give the word's span in the recording or drop the context"
        )
    if not placeholder_once(row[f"context_{side}"]):
        raise WpatchError(f"{where} needs exactly one {{}} where the word is, e.g. 'the cat {{}} on the mat'")
    start, end = row[f"context_start_{side}"], row[f"context_end_{side}"]
    if not start and not end:
        if seconds > MAX_SECONDS:
            raise WpatchError(
                f"{where}: the recording is {seconds:.1f} s long and Whisper hears only {MAX_SECONDS:.0f} s; give "
                f"context_start_{side}/context_end_{side} (a clip of at most {MAX_SECONDS:.0f} s around the word)"
            )
        return "0", f"{seconds:.6f}"
    try:
        begin, stop = float(start), float(end)
    except ValueError:
        raise WpatchError(
            f"{where}: context_start_{side}={start!r} context_end_{side}={end!r} is not two numbers; give both, in "
            "seconds, or neither (the whole recording)"
        ) from None
    word = float(row[f"start_{side}"]), float(row[f"end_{side}"])
    if begin < 0 or stop > seconds + 1e-3 or not (begin <= word[0] and word[1] <= stop):
        raise WpatchError(
            f"{where}: the clip {begin:g}-{stop:g} s must hold the word's span {word[0]:g}-{word[1]:g} s and lie in "
            f"the recording (0-{seconds:.3f} s); fix context_start_{side}/context_end_{side}"
        )
    if stop - begin > MAX_SECONDS:
        raise WpatchError(
            f"{where}: the clip {begin:g}-{stop:g} s is longer than the {MAX_SECONDS:.0f} s Whisper hears; cut it at "
            "word boundaries closer to the word"
        )
    return start, end


def csv_cells(path: Path) -> pd.DataFrame:
    """A pairs CSV's cells as text; a first row with more fields than the header is refused (pandas would take its
    first fields for an index and shift the rest into the wrong columns), and so is any CSV pandas cannot read."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, index_col=False)
        except pd.errors.ParserWarning:
            raise WpatchError(
                f"pairs file {path}: its first row has more fields than its header; quote a value that holds a "
                "comma, or name every column in the header"
            ) from None
        except Exception as error:
            raise WpatchError(
                f"pairs file {path} is not a readable CSV ({' '.join(str(error).split())}); save it as "
                "comma-separated UTF-8"
            ) from None


def read_pairs(path: str | Path | None = None, limit: int | None = None) -> pd.DataFrame:
    """The checked pairs table, first `limit` rows; `path` is a CSV or a packaged set's name (None: starter)."""
    path = pairs_path(path)
    if not path.is_file():
        raise WpatchError(
            f"pairs file {path} does not exist; pass a CSV with columns word_a,word_b or one of {', '.join(PACKAGED)}"
        )
    pairs = csv_cells(path)
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
    for column, default in file_columns().items():
        values = pairs[column].str.strip() if column in pairs.columns else pd.Series("", index=pairs.index)
        pairs[column] = values.replace("", default)
    if "pair_id" not in pairs.columns:
        pairs["pair_id"] = [f"p{i:05d}" for i in range(len(pairs))]
    for index, row in pairs.iterrows():
        line = index + 2  # header is line 1
        if row["carrier"]:
            check_carrier(path, line, row)
        for side in ("a", "b"):
            if not row[f"word_{side}"] and row[f"audio_{side}"]:
                raise WpatchError(
                    f"pairs file {path} line {line}: word_{side} is empty, so the text of recording "
                    f"{inline(row[f'audio_{side}'][:60])} is unknown and nothing can be scored against it; write "
                    "the word as the speaker says it, or drop the row"
                )
            if not row[f"word_{side}"]:
                raise WpatchError(f"pairs file {path} line {line}: empty word_{side}; fill it in or drop the row")
            if not normalise(row[f"word_{side}"]):
                raise WpatchError(
                    f"pairs file {path} line {line}: word_{side} {row[f'word_{side}']!r} has no letters or digits, so "
                    "no transcript can match it; give a word"
                )
            heard_in = [c for c in ("context", "context_start", "context_end") if row[f"{c}_{side}"]]
            if heard_in and not row[f"audio_{side}"]:
                raise WpatchError(
                    f"pairs file {path} line {line}: {heard_in[0]}_{side} given without audio_{side}; a context is "
                    "the recording around a recorded word, so give the recording and the word's span or drop it"
                )
            if (row[f"context_start_{side}"] or row[f"context_end_{side}"]) and not row[f"context_{side}"]:
                raise WpatchError(
                    f"pairs file {path} line {line}: context_start_{side}/context_end_{side} given without "
                    f"context_{side}; give the clip's words with {{}} for the word, or drop the clip's bounds"
                )
            if row[f"start_{side}"] or row[f"end_{side}"]:
                if not row[f"audio_{side}"]:
                    raise WpatchError(
                        f"pairs file {path} line {line}: start_{side}/end_{side} given without audio_{side}; a span "
                        "is a word's place in a recording, so give the recording or drop the span"
                    )
            if row[f"audio_{side}"]:
                audio = Path(row[f"audio_{side}"])
                audio = audio if audio.is_absolute() else path.parent / audio
                if not readable_path(audio):
                    raise WpatchError(
                        f"pairs file {path} line {line}: audio_{side} {inline(row[f'audio_{side}'][:60])} is no path "
                        "this system can open (too long, or a character it refuses); give the recording's path"
                    )
                named = f"pairs file {path} line {line}: audio_{side} {inline(str(audio))}"
                if audio.is_dir():
                    raise WpatchError(
                        f"{named} is a directory, not an audio file; give the recording's own path (wav, flac or mp3)"
                    )
                if not audio.is_file():
                    raise WpatchError(f"{named} does not exist; fix the path or leave it empty to synthesise")
                seconds = recording_seconds(audio)
                if row[f"start_{side}"] or row[f"end_{side}"]:
                    names = (f"start_{side}", f"end_{side}")
                    check_span(named, row[f"start_{side}"], row[f"end_{side}"], seconds, names)
                if row[f"context_{side}"]:
                    clip = check_context(path, line, side, row, seconds)
                    pairs.loc[index, [f"context_start_{side}", f"context_end_{side}"]] = clip
                elif seconds > MAX_SECONDS:
                    raise WpatchError(
                        f"{named} is {seconds:.1f} s long and Whisper "
                        f"hears only the first {MAX_SECONDS:.0f} s; trim it to the word"
                    )
                pairs.at[index, f"audio_{side}"] = str(audio.resolve())
    stimulus = stimulus_columns()
    repeats = pairs.duplicated(stimulus)
    if repeats.any():
        index = repeats.idxmax()
        first = pairs.index[(pairs[stimulus] == pairs.loc[index, stimulus]).all(axis=1)][0]
        raise WpatchError(
            f"pairs file {path} line {index + 2} repeats line {first + 2} "
            f"({inline(pairs.at[index, 'word_a'])},{inline(pairs.at[index, 'word_b'])}); drop the duplicate row"
        )
    if pairs["pair_id"].duplicated().any():
        dup = pairs["pair_id"][pairs["pair_id"].duplicated()].iloc[0]
        raise WpatchError(f"pairs file {path}: pair_id {dup!r} appears twice; make pair ids unique")
    return pairs.reset_index(drop=True)


def check_word_tokens(pairs: pd.DataFrame, dims, path, language: str | None = None) -> None:
    """Refuse a row whose word, read as the decoder scores it (after the forced transcript start and, in a
    carrier sentence or a recording's context, the words before it: `wpatch.text.scored_word`), passes the
    decoder's `dims.n_text_ctx`-token context; each side's word is read in both sides' texts. `language`: the
    run's decoding language (None: each word's own)."""
    tokenizers, lengths = {}, {}

    def length(lang: str, text: str, context: str) -> int:
        if (lang, text, context) not in lengths:
            if lang not in tokenizers:
                tokenizers[lang] = tokenizer_for(dims, language or lang)
            word = scored_word(tokenizers[lang], written_tokens(tokenizers[lang], text, lang), before(context))
            lengths[lang, text, context] = len(word.prefix) + max(map(len, word.forms))
        return lengths[lang, text, context]

    for index, row in pairs.iterrows():
        contexts = [row[f"context_{side}"] or row["carrier"] for side in "ab"]
        for side in "ab":
            word = row[f"word_{side}"]
            longest = max(length(row[f"lang_{side}"], word, context) for context in contexts)
            if longest > dims.n_text_ctx:
                shown = repr(word) if len(word) <= 40 else f"{word[:40]!r}... ({len(word)} characters)"
                raise WpatchError(
                    f"pairs file {path} line {index + 2}: word_{side} {shown} is read as {longest} tokens (with the "
                    f"transcript start and the words before it), more than the decoder's {dims.n_text_ctx}-token "
                    "context; give a word (or carrier) that fits"
                )


log = logging.getLogger(__name__)


def first_use(pairs: pd.DataFrame, word: str, lang: str, audio: str, start: str = "") -> tuple[int, str]:
    """The pairs-file line and column where a clip is first used: its recording's (and span's) audio_a / audio_b
    or, for a synthesised clip, the word_a / word_b of that word and language without a recording."""
    for index, row in pairs.iterrows():
        for side in ("a", "b"):
            if audio and (row[f"audio_{side}"], row[f"start_{side}"]) == (audio, start):
                return index + 2, f"audio_{side}"
            if not audio and (row[f"word_{side}"], row[f"lang_{side}"], row[f"audio_{side}"]) == (word, lang, ""):
                return index + 2, f"word_{side}"
    return 0, ""


def silent_clips(pairs: pd.DataFrame, path, clips: list[tuple], reasons: list[str | None], tell: bool = True) -> list:
    """The clips without speech (`reasons[i]` from `audio.no_speech`; `clips[i]` is (word, lang, recording, voice,
    span start, span end, file)), each with the pairs-file line and column that first uses it, and told (`tell`) in
    one warning line each. Their items still run; the list goes to summary.json (`silent_clips`)."""
    found = []
    for (word, lang, audio, voice, start, _, file), reason in zip(clips, reasons):
        if reason is None:
            continue
        line, column = first_use(pairs, word, lang, audio, start)
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
    """One row per patching item, numbered (`item_id`): its `pair` (`wpatch.sides.Pair`, parsed from the checked
    table), `direction` and its `source` and `target` sides: word A's states into word B's run (`a->b`), and the
    reverse if bidirectional."""
    directions = [("a", "b")] + ([("b", "a")] if bidirectional else [])
    rows = [
        {"pair": pair, "direction": f"{src}->{tgt}", "source": pair.side(src), "target": pair.side(tgt)}
        for pair in map(pair_of, pairs.to_dict("records"))
        for src, tgt in directions
    ]
    items = pd.DataFrame(rows, columns=["pair", "direction", "source", "target"])
    items.insert(0, "item_id", range(len(items)))
    return items
