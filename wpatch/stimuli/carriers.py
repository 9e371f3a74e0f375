"""Words inside carrier sentences: a pairs file's `carrier` (e.g. `say {} again`) is spoken whole with the word in
place of `{}`; the word's encoder frames (the `word` window) come from here (its place in a transcript:
`wpatch.text.word_at`).

Word frames: none of the voices reports its own phone durations, so they come from Whisper: openai-whisper's
word alignment (`whisper.timing.find_alignment`, what `transcribe(word_timestamps=True)` uses: cross-attention
of the alignment heads, dynamic time warping) of the sentence's own text on the clean clip, with the run's model.
Its times are on a 20 ms grid, the encoder's frames.
"""

import math

import numpy as np
import torch
import whisper
from whisper.timing import find_alignment

ALIGNMENT = "Whisper word alignment (whisper.timing.find_alignment) of the sentence's text on the clean clip"


def sentence(carrier: str, word: str) -> str:
    """The carrier with the word in place (the word alone without a carrier)."""
    return carrier.replace("{}", word) if carrier else word


def written(carrier: str, word: str) -> str:
    """The sentence as Whisper writes it: a leading space, the first letter upper case."""
    text = sentence(carrier.strip(), word)
    return " " + text[:1].upper() + text[1:]


def word_frames(model, tokenizer, mel: torch.Tensor, n_samples: int, carrier: str, word: str) -> tuple[int, int]:
    """Encoder frames [start, end) where `word` is spoken in its carrier sentence (clean log-mel `mel`, (n_mels,
    3000), of a clip `n_samples` long), from Whisper's alignment of the sentence's text (see the module docstring)."""
    text = written(carrier, word)
    start = 1 + carrier.strip().index("{}")  # where the word begins in `text`
    device = next(model.parameters()).device
    timings = find_alignment(
        model, tokenizer, tokenizer.encode(text), mel.to(device), n_samples // whisper.audio.HOP_LENGTH
    )
    ends = np.cumsum([len(t.word) for t in timings])
    covering = [t for t, end in zip(timings, ends) if end - len(t.word) < start + len(word) and end > start]
    first = math.floor(covering[0].start / 0.02)
    last = max(first + 1, math.ceil(covering[-1].end / 0.02))
    return first, min(last, model.dims.n_audio_ctx)
