"""Log-mels on disk: computed once per clip, read back memory-mapped, so a rerun or another rank reads
them instead of computing them, and a run holds only the current batch's log-mels in memory.

A log-mel is stored as `<root>/<n_mels>/<sha256 of the clip's bytes>.npy` (float32, (n_mels, 3000)), written
under a temporary name and renamed, so concurrent writers (several ranks) never leave a half-written file.
"""

import hashlib
from pathlib import Path

import numpy as np
import torch
import whisper

from wpatch.atomic import atomic_path
from wpatch.stimuli.audio import load_audio, log_mel, no_speech, speech_span

# log-mels made with other STFT settings must not be read back: they are part of the key
_SETTINGS = (
    f"sr{whisper.audio.SAMPLE_RATE}-fft{whisper.audio.N_FFT}-hop{whisper.audio.HOP_LENGTH}-n{whisper.audio.N_SAMPLES}"
)


def clip_digest(path: str | Path) -> str:
    """sha256 of a clip file's bytes (the cache key: the same audio gives the same log-mel)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class MelTable:
    """The log-mels of a run's clips, row i for clip i, read from their `.npy` files on each access.

    Indexing (an int, a slice, a list or a 1-D tensor of clip rows) returns a tensor, in pinned memory when `pin`
    (fast, asynchronous copies to the GPU)."""

    def __init__(self, files: list[Path], n_mels: int, n_frames: int, pin: bool = False):
        self.files, self.pin = files, pin
        self.shape = (len(files), n_mels, n_frames)

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index) -> torch.Tensor:
        rows = list(range(len(self)))[index] if isinstance(index, slice) else torch.as_tensor(index).tolist()
        single = isinstance(rows, int)
        rows = [rows] if single else rows
        out = torch.empty((len(rows), *self.shape[1:]), dtype=torch.float32, pin_memory=self.pin)
        for i, row in enumerate(rows):
            out[i].numpy()[...] = np.load(self.files[row], mmap_mode="r")
        return out[0] if single else out


class MelStore:
    """The on-disk log-mel cache under `root`."""

    def __init__(self, root: str | Path):
        self.root = Path(root) / _SETTINGS
        self.computed = 0  # log-mels this store computed (the rest were read back)
        self.no_speech: list[str | None] = []  # per clip of the last `table`: why it holds no speech, or None

    def file(self, digest: str, n_mels: int) -> Path:
        return self.root / str(n_mels) / f"{digest}.npy"

    def put(self, path: Path, audio: np.ndarray, n_mels: int) -> Path:
        """The log-mel file of the clip at `path` (with samples `audio`), computed and written if missing."""
        target = self.file(clip_digest(path), n_mels)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as partial, open(partial, "wb") as out:
                np.save(out, log_mel(audio, n_mels).numpy())
            self.computed += 1
        return target

    def table(self, paths: list[Path], n_mels: int, n_ctx: int, pin: bool = False) -> tuple[MelTable, torch.Tensor]:
        """The log-mel table of these clips (computing the missing ones) and each clip's spoken frames
        (`wpatch.stimuli.audio.speech_span`), one clip in memory at a time; which clips hold no speech goes to
        `self.no_speech` (`wpatch.stimuli.audio.no_speech`)."""
        files, spans, self.no_speech = [], [], []
        for path in paths:
            audio = load_audio(path)
            spans.append(speech_span(audio, n_ctx=n_ctx))
            self.no_speech.append(no_speech(audio))
            files.append(self.put(path, audio, n_mels))
        return MelTable(files, n_mels, whisper.audio.N_FRAMES, pin), torch.tensor(spans, dtype=torch.long).reshape(
            -1, 2
        )
