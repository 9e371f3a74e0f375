"""Shared fixtures: a small randomly initialised Whisper saved as an openai-format checkpoint, and a clip cache."""

import dataclasses
import math

import pytest
import torch
from whisper.model import ModelDimensions, Whisper

SMALL_DIMS = ModelDimensions(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=64,
    n_audio_head=2,
    n_audio_layer=3,
    n_vocab=51864,
    n_text_ctx=448,
    n_text_state=64,
    n_text_head=2,
    n_text_layer=2,
)


def random_whisper(dims: ModelDimensions = SMALL_DIMS, seed: int = 0) -> Whisper:
    """A Whisper of these dimensions with every parameter drawn from a seeded generator."""
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


def save_checkpoint(model: Whisper, path) -> str:
    torch.save({"dims": dataclasses.asdict(model.dims), "model_state_dict": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="session")
def small_model_path(tmp_path_factory) -> str:
    """Path of a small random Whisper checkpoint (3 encoder blocks), loadable as a model spec."""
    return save_checkpoint(random_whisper(), tmp_path_factory.mktemp("models") / "small.pt")


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> str:
    """One clip cache shared by the session's tests (synthesis is the slow part)."""
    return str(tmp_path_factory.mktemp("clips"))
