"""A randomly initialised Whisper of any dimensions, every parameter drawn from a seeded generator: for tests and
for cost measurements that need a model of a given shape rather than trained weights. (openai-whisper's `Whisper`
leaves the decoder's positional embedding uninitialised, `torch.empty`, so a bare `Whisper(dims)` may compute on
whatever the memory held.)"""

import math

import torch
from whisper.model import ModelDimensions, Whisper


def random_whisper(dims: ModelDimensions, seed: int = 0) -> Whisper:
    """A Whisper of these dimensions in eval mode: layer-norm weights 1 + 0.1 N(0, 1), other vectors 0.1 N(0, 1),
    matrices N(0, 1) / sqrt(fan-in)."""
    generator = torch.Generator().manual_seed(seed)
    model = Whisper(dims)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1:
                base = 1.0 if "ln" in name and name.endswith("weight") else 0.0
                parameter.copy_(base + 0.1 * torch.randn(parameter.shape, generator=generator))
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / math.sqrt(parameter.shape[-1]))
    return model.eval()
