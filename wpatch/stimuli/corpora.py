"""Spoken words found in a corpus folder: one row per spoken word (`TOKEN_COLUMNS`), read from either layout.

Folder-per-word corpora (the clip is the word):
- Speech Commands: `WORD/SPEAKER_nohash_N.wav` (folders starting with `_`, such as `_background_noise_`, skipped);
- Multilingual Spoken Words: `LANG/clips/WORD/*.opus` (or `.wav`); the speaker from MSWC's splits table
  `LANG_splits.csv` (in `LANG/` or the corpus folder; columns SET, LINK, WORD, VALID, SPEAKER, GENDER) where it is
  there and names the clip, else the file name's stem (MSWC names a clip after its Common Voice recording), with a
  note.
Long recordings with word alignments (the word is a span of the recording):
- Praat TextGrid (what the Montreal Forced Aligner writes): `NAME.TextGrid` beside its recording `NAME.wav` (or
  .flac, .opus, ...), words from the tier named `words` (else the first interval tier), speaker = the folder
  holding it (MFA's one folder per speaker);
- CTM: lines `RECORDING CHANNEL START DURATION WORD [CONFIDENCE]`, the recording `RECORDING.wav` (or another
  extension) beside the .ctm file, speaker = the recording's name up to its first `-` (LibriSpeech's
  `SPEAKER-CHAPTER-UTTERANCE`).
Alignment files are read strictly (`wpatch.stimuli.alignments`: one that does not parse completely is refused,
naming its line), and a word whose span no clip can hold is refused, naming the file, line and word.
A word of an aligned recording is heard in its recording's context (`wpatch.stimuli.contexts`) unless the caller
asks for it cut to its span (`context="word"`).
"""

import logging
from pathlib import Path

import pandas as pd
import soundfile

from wpatch.errors import WpatchError
from wpatch.stimuli.alignments import Word, ctm_lines, textgrid_tiers
from wpatch.stimuli.contexts import with_context
from wpatch.stimuli.pairs_file import check_span

TOKEN_COLUMNS = ["word", "lang", "audio", "start", "end", "speaker"]
CONTEXT_COLUMNS = ["context", "context_start", "context_end"]  # a word heard in its recording ("": alone)
CONTEXTS = ("recording", "word")  # how a word of an aligned recording is heard: in its recording, or cut out
AUDIO_SUFFIXES = (".wav", ".flac", ".opus", ".ogg", ".mp3")
LAYOUTS = (
    "Speech Commands (WORD/SPEAKER_nohash_N.wav)",
    "Multilingual Spoken Words (LANG/clips/WORD/*.opus or *.wav)",
    "Praat TextGrids beside their recordings (NAME.TextGrid + NAME.wav)",
    "CTM files beside their recordings (NAME.ctm + RECORDING.wav)",
)
log = logging.getLogger(__name__)
SILENCE = {"", "sp", "sil", "<eps>", "<unk>", "spn"}  # aligner labels that are not words


def seconds(path: Path) -> float:
    """A recording's length from its header; an undecodable file is refused, naming it."""
    try:
        return soundfile.info(str(path)).duration
    except Exception as error:
        raise WpatchError(
            f"audio file {path} cannot be decoded ({error}); convert it to wav or flac (e.g. ffmpeg -i in.opus out.wav)"
        ) from None


def whole_clip(word: str, lang: str, path: Path, speaker: str) -> dict:
    return {"word": word, "lang": lang, "audio": path, "start": 0.0, "end": seconds(path), "speaker": speaker}


def speech_commands(root: Path, lang: str) -> list[dict]:
    return [
        whole_clip(folder.name, lang, clip, clip.name.split("_nohash_")[0])
        for folder in sorted(root.iterdir())
        if folder.is_dir() and not folder.name.startswith("_")
        for clip in sorted(folder.glob("*_nohash_*.wav"))
    ]


def mswc_speakers(root: Path, lang: str) -> dict[str, str] | None:
    """Clip name (stem) -> speaker from MSWC's own splits table of a language, `LANG_splits.csv` (columns SET, LINK,
    WORD, VALID, SPEAKER, GENDER; LINK the clip's path under `clips/`) in `root/LANG/` or `root/`; None where
    neither has it."""
    for path in (root / lang / f"{lang}_splits.csv", root / f"{lang}_splits.csv"):
        if path.is_file():
            try:
                table = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=["LINK", "SPEAKER"])
            except Exception as error:
                raise WpatchError(
                    f"MSWC splits table {path} cannot be read ({error}); it needs columns LINK and SPEAKER, as MSWC "
                    "ships it, or remove it to name speakers by their clips"
                ) from None
            return {Path(link).stem: speaker for link, speaker in zip(table.LINK, table.SPEAKER) if speaker.strip()}
    return None


def mswc(root: Path) -> list[dict]:
    tokens = []
    for clips in sorted(root.glob("*/clips")):
        lang = clips.parent.name
        speakers = mswc_speakers(root, lang)
        if speakers is None:
            log.warning(
                f"wpatch: note: no {lang}_splits.csv in {clips.parent} or {root}: each {lang} clip's speaker is its "
                "file name (one Common Voice recording), so no speaker says two words; put MSWC's splits table there "
                "for its speakers"
            )
        tokens += [
            whole_clip(folder.name, lang, clip, (speakers or {}).get(clip.stem, clip.stem))
            for folder in sorted(clips.iterdir())
            if folder.is_dir()
            for clip in sorted(folder.iterdir())
            if clip.suffix in (".opus", ".wav")
        ]
    return tokens


def recording_beside(alignment: Path, name: str) -> Path:
    """The recording called `name` next to an alignment file."""
    for suffix in AUDIO_SUFFIXES:
        if (alignment.parent / f"{name}{suffix}").is_file():
            return alignment.parent / f"{name}{suffix}"
    raise WpatchError(
        f"alignment {alignment} names recording {name!r}, but no {name}.wav (or {', '.join(AUDIO_SUFFIXES[1:])}) "
        "lies beside it; put the recording next to its alignment"
    )


def aligned_token(kind: str, path: Path, word: Word, audio: Path, seconds: float, lang: str, speaker: str) -> dict:
    """A word of an alignment file as a token, its span refused (naming the file, line and word) where no clip
    could hold it: `wpatch.stimuli.pairs_file.check_span`, the check `wpatch predict` makes of a pairs file."""
    where = f"{kind} {path} line {word.line}: word {word.label!r} in {audio}"
    check_span(where, word.start, word.end, seconds, ("its start", "its end"))
    return {"word": word.label.lower(), "lang": lang, "audio": audio, "start": word.start, "end": word.end} | {
        "speaker": speaker
    }


def textgrids(root: Path, lang: str) -> list[dict]:
    tokens = []
    for path in sorted(root.rglob("*.TextGrid")):
        tiers = textgrid_tiers(path)
        if not tiers:
            raise WpatchError(f"TextGrid {path} has no interval tier; it needs a tier of words (MFA's `words`)")
        words = next((t for name, t in tiers.items() if name.split(" - ")[-1] == "words"), next(iter(tiers.values())))
        audio = recording_beside(path, path.stem)
        tokens += [
            aligned_token("TextGrid", path, word, audio, seconds(audio), lang, path.parent.name)
            for word in words
            if word.label.strip().lower() not in SILENCE
        ]
    return tokens


def ctms(root: Path, lang: str) -> list[dict]:
    tokens = []
    for path in sorted(root.rglob("*.ctm")):
        lengths = {}
        for name, word in ctm_lines(path):
            if word.label.lower() not in SILENCE:
                audio = recording_beside(path, name)
                lengths.setdefault(audio, seconds(audio))
                tokens.append(aligned_token("CTM", path, word, audio, lengths[audio], lang, name.split("-")[0]))
    return tokens


def read_corpus(root: str | Path, lang: str = "en", context: str = "recording") -> pd.DataFrame:
    """Every spoken word of the corpus at `root` (`TOKEN_COLUMNS`; `lang` for layouts that do not name it), in
    the first layout found; a word of an aligned recording with its context (`CONTEXT_COLUMNS`,
    `wpatch.stimuli.contexts`) unless `context` is `word` (heard alone, cut to its span)."""
    if context not in CONTEXTS:
        raise WpatchError(f"context {context!r} is not one of {', '.join(CONTEXTS)}; give recording or word")
    root = Path(root)
    if not root.is_dir():
        raise WpatchError(f"corpus folder {root} does not exist or is not a folder; give the corpus's top folder")
    for aligned, found in (
        (False, lambda: mswc(root) if any(root.glob("*/clips")) else []),
        (False, lambda: speech_commands(root, lang)),
        (True, lambda: textgrids(root, lang)),
        (True, lambda: ctms(root, lang)),
    ):
        tokens = found()
        if tokens:
            table = pd.DataFrame(tokens, columns=TOKEN_COLUMNS)
            table["audio"] = table["audio"].map(str)
            if aligned and context == "recording":
                table = with_context(table, {audio: seconds(Path(audio)) for audio in table.audio.unique()})
            return table.reindex(columns=TOKEN_COLUMNS + CONTEXT_COLUMNS).fillna("")
    raise WpatchError(f"corpus folder {root} is in none of the layouts understood: {'; '.join(LAYOUTS)}")
