"""Spoken words found in a corpus folder: one row per spoken word (`TOKEN_COLUMNS`), read from either layout.

Folder-per-word corpora (the clip is the word):
- Speech Commands: `WORD/SPEAKER_nohash_N.wav` (folders starting with `_`, such as `_background_noise_`, skipped);
- Multilingual Spoken Words: `LANG/clips/WORD/*.opus` (or `.wav`); the speaker is the file name's stem (MSWC
  names a clip after its Common Voice recording; its speaker table is a separate download).
Long recordings with word alignments (the word is a span of the recording):
- Praat TextGrid (what the Montreal Forced Aligner writes): `NAME.TextGrid` beside its recording `NAME.wav` (or
  .flac, .opus, ...), words from the tier named `words` (else the first interval tier), speaker = the folder
  holding it (MFA's one folder per speaker);
- CTM: lines `RECORDING CHANNEL START DURATION WORD [CONFIDENCE]`, the recording `RECORDING.wav` (or another
  extension) beside the .ctm file, speaker = the recording's name up to its first `-` (LibriSpeech's
  `SPEAKER-CHAPTER-UTTERANCE`).
"""

from pathlib import Path

import pandas as pd
import soundfile

from wpatch.errors import WpatchError

TOKEN_COLUMNS = ["word", "lang", "audio", "start", "end", "speaker"]
AUDIO_SUFFIXES = (".wav", ".flac", ".opus", ".ogg", ".mp3")
LAYOUTS = (
    "Speech Commands (WORD/SPEAKER_nohash_N.wav)",
    "Multilingual Spoken Words (LANG/clips/WORD/*.opus or *.wav)",
    "Praat TextGrids beside their recordings (NAME.TextGrid + NAME.wav)",
    "CTM files beside their recordings (NAME.ctm + RECORDING.wav)",
)
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


def mswc(root: Path) -> list[dict]:
    return [
        whole_clip(folder.name, clips.parent.name, clip, clip.stem)
        for clips in sorted(root.glob("*/clips"))
        for folder in sorted(clips.iterdir())
        if folder.is_dir()
        for clip in sorted(folder.iterdir())
        if clip.suffix in (".opus", ".wav")
    ]


def recording_beside(alignment: Path, name: str) -> Path:
    """The recording called `name` next to an alignment file."""
    for suffix in AUDIO_SUFFIXES:
        if (alignment.parent / f"{name}{suffix}").is_file():
            return alignment.parent / f"{name}{suffix}"
    raise WpatchError(
        f"alignment {alignment} names recording {name!r}, but no {name}.wav (or {', '.join(AUDIO_SUFFIXES[1:])}) "
        "lies beside it; put the recording next to its alignment"
    )


def textgrids(root: Path, lang: str) -> list[dict]:
    paths = sorted(root.rglob("*.TextGrid"))
    if not paths:
        return []
    try:
        from praatio import textgrid
    except ImportError:
        raise WpatchError("reading TextGrids needs praatio; pip install -e '.[corpora]'") from None

    tokens = []
    for path in paths:
        try:
            grid = textgrid.openTextgrid(str(path), includeEmptyIntervals=False)
        except Exception as error:
            raise WpatchError(f"TextGrid {path} cannot be read ({error}); save it from Praat or the aligner again")
        tiers = [grid.getTier(name) for name in grid.tierNames if isinstance(grid.getTier(name), textgrid.IntervalTier)]
        if not tiers:
            raise WpatchError(f"TextGrid {path} has no interval tier; it needs a tier of words (MFA's `words`)")
        tier = next((t for t in tiers if t.name.split(" - ")[-1] == "words"), tiers[0])
        audio = recording_beside(path, path.stem)
        tokens += [
            {
                "word": label.lower(),
                "lang": lang,
                "audio": audio,
                "start": start,
                "end": end,
                "speaker": path.parent.name,
            }
            for start, end, label in tier.entries
            if label.strip().lower() not in SILENCE
        ]
    return tokens


def ctms(root: Path, lang: str) -> list[dict]:
    tokens = []
    for path in sorted(root.rglob("*.ctm")):
        for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            fields = line.split()
            if not fields or line.startswith(";;"):
                continue
            try:
                name, _, start, duration, word = fields[:5]
                start, duration = float(start), float(duration)
            except ValueError:
                raise WpatchError(
                    f"CTM {path} line {line_number} is not RECORDING CHANNEL START DURATION WORD; fix the line"
                ) from None
            if word.lower() not in SILENCE:
                audio = recording_beside(path, name)
                speaker = name.split("-")[0]
                tokens.append(
                    {"word": word.lower(), "lang": lang, "audio": audio, "start": start, "end": start + duration}
                    | {"speaker": speaker}
                )
    return tokens


def read_corpus(root: str | Path, lang: str = "en") -> pd.DataFrame:
    """Every spoken word of the corpus at `root` (`TOKEN_COLUMNS`; `lang` for layouts that do not name it), in
    the first layout found."""
    root = Path(root)
    if not root.is_dir():
        raise WpatchError(f"corpus folder {root} does not exist or is not a folder; give the corpus's top folder")
    for found in (
        lambda: mswc(root) if any(root.glob("*/clips")) else [],
        lambda: speech_commands(root, lang),
        lambda: textgrids(root, lang),
        lambda: ctms(root, lang),
    ):
        tokens = found()
        if tokens:
            table = pd.DataFrame(tokens, columns=TOKEN_COLUMNS)
            table["audio"] = table["audio"].map(str)
            return table
    raise WpatchError(f"corpus folder {root} is in none of the layouts understood: {'; '.join(LAYOUTS)}")
