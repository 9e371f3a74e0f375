"""LightningDataModules that serve Whisper patching experiments."""

from datamodules.pairs import PairDataModule

__all__ = ["PairDataModule"]
