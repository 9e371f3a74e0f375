"""A run's clips as a CTC model of the wav2vec2 family reads them (`wpatch.models.wav2vec2.input_values`): its
input values, where Whisper reads log-mels (`wpatch.stimuli.melcache`)."""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from wpatch.models.wav2vec2 import N_CTX, CTCDims, input_values
from wpatch.stimuli.audio import FRAME, load_audio, no_speech, speech_span


@dataclass
class Waveforms:
    """Every clip of a run as the model reads it: `values` (N, samples) padded to the longest clip, each clip's
    length in `samples` (N,), its spoken frames `spans` (N, 2) and why it holds no speech (`no_speech`)."""

    values: Tensor
    samples: Tensor
    spans: Tensor
    no_speech: list[str | None]


def waveforms(paths: list[Path], dims: CTCDims) -> Waveforms:
    """The run's clips, read, scaled and padded to the longest (whole frames, at most 30 s)."""
    audios = [load_audio(path)[: N_CTX * FRAME] for path in paths]
    n_samples = FRAME * -(-max(len(audio) for audio in audios) // FRAME)
    return Waveforms(
        torch.stack([input_values(audio, n_samples, dims) for audio in audios]),
        torch.tensor([len(audio) for audio in audios]),
        torch.tensor([speech_span(audio) for audio in audios], dtype=torch.long).reshape(-1, 2),
        [no_speech(audio) for audio in audios],
    )
