"""The run's clips inside its folder, so that report.html can play and show them from the folder alone: every
clean clip copied into `clips/` under the first 16 hex digits of the sha256 of its bytes (the same audio is one
file), its log-mel spectrogram (as the model reads it, up to the clip's end) as a PNG of the same name, and
`clips/index.csv` saying which clips each item has (item_id, source_clip, source_frames, target_clip,
target_frames; frames: the spectrogram's width in 10 ms log-mel frames).
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


def spectrogram_frames(path: Path) -> int:
    """Log-mel frames up to the clip's end (at least one, at most Whisper's 30 s)."""
    info = soundfile.info(str(path))
    return max(1, min(MEL_FRAMES, math.ceil(100 * info.frames / info.samplerate)))


def copy_clips(datamodule, folder: Path) -> pd.DataFrame:
    """Copy the clean clips of `datamodule`'s items (a set-up `PairDataModule`) into `folder`/clips with their
    spectrograms, write `clips/index.csv`, and return it."""
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
    write_atomically(Path(folder) / INDEX, index.to_csv(index=False))
    return index
