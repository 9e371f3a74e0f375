"""Shared fixtures: a small randomly initialised Whisper saved as an openai-format checkpoint, and a clip cache."""

import dataclasses

import pytest
import torch
from whisper.model import ModelDimensions, Whisper

from wpatch.models.random import random_whisper as seeded_whisper

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
    return seeded_whisper(dims, seed)


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
