"""The run's clips inside its folder, so that report.html can play and show them from the folder alone: every
clean clip copied into `clips/` under the first 16 hex digits of the sha256 of its bytes (the same audio is one
file), its log-mel spectrogram (as the model reads it, up to the clip's end) as a PNG of the same name, and
`clips/index.csv` saying which clips each item has (item_id, source_clip, source_frames, target_clip,
target_frames; frames: the spectrogram's width in 10 ms log-mel frames) and what the model heard of each, its
clean greedy transcript (source_heard, target_heard; kept per batch in `parts/heard-*.csv` while the run goes on).
"""

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile
from matplotlib import image

from wpatch.analysis.html import INDEX
from wpatch.atomic import atomic_path, write_atomically
from wpatch.stimuli.audio import load_audio, log_mel
from wpatch.stimuli.melcache import clip_digest

MEL_FRAMES = 3000  # log-mel frames in Whisper's 30 s input (10 ms each)
HEARD = ["source_heard", "target_heard"]  # clips/index.csv's columns of the clean transcripts


def write_heard_part(parts: Path, heard: dict[int, list[str]]) -> None:
    """One batch's clean transcripts (item id -> [source clip's, target clip's]) as `parts/heard-<first item>.csv`."""
    frame = pd.DataFrame([[item, *texts] for item, texts in heard.items()], columns=["item_id", *HEARD])
    write_atomically(parts / f"heard-{min(heard):08d}.csv", frame.to_csv(index=False))


def read_heard(parts: Path) -> pd.DataFrame | None:
    """Every batch's clean transcripts (`write_heard_part`), one row per item; None when no part has them."""
    files = sorted(Path(parts).glob("heard-*.csv"))
    if not files:
        return None
    read = [pd.read_csv(f, keep_default_na=False, dtype={c: str for c in HEARD}) for f in files]
    return pd.concat(read, ignore_index=True).drop_duplicates("item_id", keep="last")


def spectrogram_frames(path: Path) -> int:
    """Log-mel frames up to the clip's end (at least one, at most Whisper's 30 s)."""
    info = soundfile.info(str(path))
    return max(1, min(MEL_FRAMES, math.ceil(100 * info.frames / info.samplerate)))


def copy_clips(datamodule, folder: Path, heard: pd.DataFrame | None = None) -> pd.DataFrame:
    """Copy the clean clips of `datamodule`'s items (a set-up `PairDataModule`) into `folder`/clips with their
    spectrograms, write `clips/index.csv` (with the clean transcripts `heard`, `read_heard`'s, when given), and
    return it."""
    clips = Path(folder) / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    names, frames = [], []
    for row, path in enumerate(datamodule.clip_paths):
        path = Path(path)
        stem = clip_digest(path)[:16]
        audio, picture = clips / f"{stem}{path.suffix.lower()}", clips / f"{stem}.png"
        width = spectrogram_frames(path)
        if not audio.exists():
            with atomic_path(audio) as partial:
                shutil.copyfile(path, partial)
        if not picture.exists():
            mel = datamodule.mels[row]
            if mel.ndim == 1:  # a CTC model reads the waveform: draw Whisper's 80-bin log-mel of the clip
                mel = log_mel(load_audio(path), 80)
            mel = np.asarray(mel)[:, :width]
            with atomic_path(picture) as partial:
                image.imsave(partial, mel, cmap="magma", origin="lower", format="png")
        names.append(audio.name)
        frames.append(width)
    items = datamodule.items
    index = pd.DataFrame(
        {
            "item_id": items["item_id"].to_numpy(),
            "source_clip": [names[i] for i in items["source_clip"]],
            "source_frames": [frames[i] for i in items["source_clip"]],
            "target_clip": [names[i] for i in items["target_clip"]],
            "target_frames": [frames[i] for i in items["target_clip"]],
        }
    )
    if heard is not None:
        index = index.merge(heard[["item_id", *HEARD]], on="item_id", how="left", validate="one_to_one")
    write_atomically(Path(folder) / INDEX, index.to_csv(index=False))
    return index
