"""What a run records of itself: the settings its rows depend on (`run_settings`, stored in run.json and checked on
every resume), the full settings that lead summary.json (`summary_settings`), and where and with what it ran
(`environment`).

The settings a run's rows depend on are every hyperparameter of the LightningModule and the DataModule, except
those in `MAY_CHANGE` (how the work is split and where caches live): a new option is checked on resume without
being listed anywhere.
"""

import importlib.metadata
import inspect
import json
import platform

import lightning as L

from wpatch.run_folder.folder import code_version, file_sha256
from wpatch.stimuli.pairs_file import pairs_path

# Hyperparameters that may differ between the starts of one run: they change how the work is batched, spread or
# cached, never a row. Each start records them in run.json's sessions instead.
MAY_CHANGE = frozenset({"batch_size", "decode_chunk", "num_workers", "group_by_source", "cache_dir"})


def public(hparams) -> dict:
    """Every hyperparameter as given, without Lightning's own entries (`_instantiator`)."""
    return {key: value for key, value in dict(hparams).items() if not key.startswith("_")}


def run_settings(pl_module: L.LightningModule, datamodule: L.LightningDataModule, precision) -> dict:
    """The settings a run's rows depend on: every hyperparameter of the module and the DataModule but `MAY_CHANGE`
    (lists as lists, windows as their labels), with what some of them resolve to: the voices each speaker
    speaks with, the pairs file's sha256 (its content), the number of layer pairs; and the precision."""
    given = {**public(pl_module.hparams), **public(datamodule.hparams)}
    settings = {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in given.items()
        if name not in MAY_CHANGE
    }
    data = datamodule.hparams
    settings.update(
        windows=[str(w) for w in pl_module.hparams.windows],
        layer_pairs=len(pl_module.layer_pairs),
        pairs_file=str(data.pairs_file or "starter_pairs.csv"),
        pairs_sha256=file_sha256(pairs_path(data.pairs_file)),
        voices={name: cache.voices for name, cache in datamodule.clips.items()},
        precision=str(precision),
    )
    return settings


def setting_defaults(module: type, data: type) -> dict:
    """The default of every setting a run records that has one: the defaults of the module's and the DataModule's
    hyperparameters (their `__init__` parameters) but `MAY_CHANGE`, as run.json stores them."""
    defaults = {
        name: list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
        for cls in (module, data)
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty and name not in MAY_CHANGE
    }
    return json.loads(json.dumps(defaults, default=str))


def summary_settings(trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
    """The settings that lead summary.json: `run_settings`, the trainer's choices, the batch size used, and every
    hyperparameter of the module and the DataModule as given (`hparams`)."""
    data = trainer.datamodule
    return {
        **run_settings(pl_module, data, trainer.precision),
        "accelerator": type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
        "devices": trainer.world_size,
        "batch_size": getattr(data, "resolved_batch_size", None) or data.hparams.batch_size,
        "hparams": {"model": public(pl_module.hparams), "data": public(data.hparams)},
    }


def session(trainer: L.Trainer, pl_module: L.LightningModule, datamodule: L.LightningDataModule, items_done: int):
    """One start of a run, as run.json's sessions record it: what may change between starts."""
    given = {**public(pl_module.hparams), **public(datamodule.hparams)}
    return {
        "code_version": code_version(),
        "accelerator": type(trainer.accelerator).__name__,
        "devices": trainer.world_size,
        **{name: value for name, value in given.items() if name in MAY_CHANGE},
        "items_done": items_done,
    }


def environment(trainer: L.Trainer, batch_size) -> dict:
    """Where and with what the run ran: package versions, device, batch size, seeds, the code's git commit."""
    import torch

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    device = (
        torch.cuda.get_device_name(trainer.strategy.root_device)
        if trainer.strategy.root_device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    packages = ("torch", "lightning", "openai-whisper", "numpy", "pandas", "ctranslate2", "hibari-tts", "wpatch")
    return {
        "python": platform.python_version(),
        "packages": {p: version(p) for p in packages},
        "device": f"{trainer.strategy.root_device.type}: {device}",
        "devices": trainer.world_size,
        "batch_size": batch_size,
        "seeds": {"bootstrap": 0, "control_clips": "item id", "hibari": 0},
        "code_version": code_version(),
    }
