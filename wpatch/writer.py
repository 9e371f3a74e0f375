"""A Lightning prediction writer: the run's I/O. Tidy rows per batch (atomic, resumable), the merge, then
the analysis (`wpatch.analysis`) on the merged rows.

Every batch's rows go to `parts/items-<first item>.csv` in the output directory, written under a temporary
name and renamed, by whichever process made them. When prediction ends, rank 0 merges the parts into
`predictions.csv` (checked: every item x patch exactly once) and hands the rows, with the run's settings,
to `wpatch.analysis.analyse` (matrices, heatmaps, `cells.csv`, `summary.json`, TensorBoard).
"""

import sys
import time
from pathlib import Path

import lightning as L
import pandas as pd
from lightning.pytorch.callbacks import BasePredictionWriter

from wpatch.analysis import ROW_KEY, analyse, console_table, read_rows
from wpatch.atomic import atomic_path
from wpatch.errors import WpatchError
from wpatch.module import ROW_COLUMNS
from wpatch.pairs import pairs_path
from wpatch.runfolder import (
    StopOnSignal,
    check_writable,
    claim_folder,
    code_version,
    fault_point,
    file_sha256,
    record_run,
)


def public(hparams) -> dict:
    """Every hyperparameter as given, without Lightning's own entries (`_instantiator`)."""
    return {key: value for key, value in dict(hparams).items() if not key.startswith("_")}


def environment(trainer: L.Trainer, batch_size) -> dict:
    """Where and with what the run ran: package versions, device, batch size, seeds, the code's git commit."""
    import importlib.metadata
    import platform

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


class PatchingResultsWriter(BasePredictionWriter):
    """Writes predictions.csv, layer matrices (overall and per category), heatmaps, summary.json and TensorBoard.

    The folder is locked while a run uses it, and `run.json` keeps the settings its rows depend on (see
    `wpatch.runfolder`). SIGTERM or SIGINT stops the run before its next batch (`RunStopped`).

    Args:
        output_dir: the run's folder: a new or empty one, or an unfinished run's to resume; one that holds a
            finished run (summary.json) or files that are not a run's is refused, and so is an empty name.
        resume: continue an unfinished run in `output_dir` (same settings), skipping items already written;
            a run whose items are all written is merged and finished.
        verbose: print what the run found (the primary matrix, diagonal / off-diagonal means) and the folder.
    """

    def __init__(self, output_dir: str = "runs/experiment_a", resume: bool = False, verbose: bool = True):
        super().__init__(write_interval="batch")
        self.verbose = verbose
        self.closing = None  # what the run found and where, once it is summarised
        if not str(output_dir).strip():
            check_writable(output_dir)  # refused: an empty name would be the current folder
        self.output_dir = Path(output_dir)
        self.resume = resume
        self.parts = self.output_dir / "parts"
        self.lock = None  # the open, locked lock file while this process owns the folder
        self.stop = StopOnSignal()
        self.parts_written = 0

    def claim(self, trainer: L.Trainer, pl_module: L.LightningModule, datamodule: L.LightningDataModule) -> None:
        """Before any work, on the process that starts the run: lock the folder (checking that it is writable),
        refuse a finished run or an unasked resume, and store (or, resuming, check) the settings in run.json."""
        if self.lock is not None:
            return
        self.lock = claim_folder(self.output_dir)
        try:
            if (self.output_dir / "summary.json").exists():
                raise WpatchError(
                    f"output directory {self.output_dir} already holds a finished run; choose another "
                    "--writer.output_dir"
                )
            done = self.finished_items()
            if done and not self.resume:
                raise WpatchError(
                    f"output directory {self.output_dir} holds an unfinished run ({len(done)} items); add "
                    "--writer.resume true to continue it, or choose another directory"
                )
            for stale in [*self.output_dir.glob(".*.partial"), *self.parts.glob(".*.partial")]:
                stale.unlink()  # left by a killed process; the lock says none is writing
            data = datamodule.hparams
            session = {
                "code_version": code_version(),
                "accelerator": type(trainer.accelerator).__name__,
                "devices": trainer.world_size,
                "batch_size": data.batch_size,
                "decode_chunk": pl_module.hparams.decode_chunk,
                "items_done": len(done),
            }
            record_run(self.output_dir, self.run_settings(trainer, pl_module, datamodule), session, self.resume)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Unlock the folder (closing the lock file drops the flock)."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.release()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.release()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            self.claim(trainer, pl_module, trainer.datamodule)
        done = self.finished_items()
        if done:
            trainer.datamodule.skip(done)
        self.started = time.time()
        self.stop.children = getattr(trainer.strategy.launcher, "procs", [])  # DDP processes this one launched
        if len(done) == len(
            trainer.datamodule.items
        ):  # nothing left to predict (Lightning skips the loop): finish here
            self.on_predict_end(trainer, pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's SIGTERM handler (installed just before this) only logs in a predict loop and broadcasts
        # over the process group inside the handler; ours replaces it (Lightning restores the old one at teardown)
        self.stop.install()

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.stop.check()

    def finished_items(self) -> set[int]:
        """Item ids already written by earlier or current processes."""
        if not self.parts.is_dir():
            return set()
        return {
            int(i) for part in self.parts.glob("items-*.csv") for i in pd.read_csv(part, usecols=["item_id"])["item_id"]
        }

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if not prediction:
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(prediction, columns=ROW_COLUMNS)
        path = self.parts / f"items-{frame['item_id'].min():08d}.csv"
        with atomic_path(path) as partial:
            frame.to_csv(partial, index=False)
        self.parts_written += 1
        if trainer.is_global_zero:
            fault_point(f"part{self.parts_written}")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            self.finish(trainer, pl_module)
        trainer.strategy.barrier()

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Merge the parts and write every table, figure and the summary (rank 0 only)."""
        if self.verbose:
            print("writing predictions.csv, tables, figures and report.md ...", file=sys.stderr, flush=True)
        rows = pd.concat([read_rows(p) for p in sorted(self.parts.glob("items-*.csv"))], ignore_index=True)
        rows = rows.sort_values(["item_id"], kind="stable").reset_index(drop=True)
        n_items, per_item = len(trainer.datamodule.items), pl_module.rows_per_item
        if rows.duplicated(ROW_KEY).any() or len(rows) != n_items * per_item:
            raise WpatchError(
                f"{self.parts} holds {len(rows)} rows, expected {n_items} items x {per_item} patches once each; "
                "delete the directory and rerun"
            )
        with atomic_path(self.output_dir / "predictions.csv") as partial:
            rows.to_csv(partial, index=False)
            fault_point("merging")
        fault_point("merged")

        clips = trainer.datamodule.clips.values()
        extra = {
            "wall_time_s": round(time.time() - self.started, 2),
            "clip_cache": {
                "synthesised": sum(c.synthesized for c in clips),
                "resynthesised_damaged": sum(c.repaired for c in clips),
            },
        }
        if trainer.datamodule.screening:
            extra["screening"] = trainer.datamodule.screening
        extra["environment"] = environment(trainer, self.settings(trainer, pl_module)["batch_size"])
        summary = analyse(rows, self.output_dir, self.settings(trainer, pl_module), extra)
        # printed by the command once the progress bar has closed (`wpatch.cli.predict`)
        self.closing = (
            f"{console_table(rows, summary)}\nwall time {extra['wall_time_s']:.1f} s; tables, figures and "
            f"report.md in:\n{self.output_dir.resolve()}"
        )

    @classmethod
    def settings(cls, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        """The run's settings: those its rows depend on (`run_settings`), the trainer's choices, and every
        hyperparameter of the module and the DataModule as given (`hparams`)."""
        data = trainer.datamodule
        return {
            **cls.run_settings(trainer, pl_module, data),
            "accelerator": type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
            "devices": trainer.world_size,
            "batch_size": getattr(data, "resolved_batch_size", None) or data.hparams.batch_size,
            "hparams": {"model": public(pl_module.hparams), "data": public(data.hparams)},
        }

    @staticmethod
    def run_settings(trainer: L.Trainer, pl_module: L.LightningModule, datamodule: L.LightningDataModule) -> dict:
        """The settings a run's rows depend on: model, patches, decoding, stimuli, voices and precision."""
        data = datamodule.hparams
        return {
            "model": pl_module.hparams.model,
            "source_layers": pl_module.hparams.source_layers,
            "target_layers": pl_module.hparams.target_layers,
            "sites": list(pl_module.hparams.sites),
            "windows": [str(w) for w in pl_module.hparams.windows],
            "sweep": pl_module.hparams.sweep,
            "alphas": list(pl_module.hparams.alphas),
            "directions": list(pl_module.hparams.directions),
            "control": pl_module.hparams.control,
            "min_separation": pl_module.hparams.min_separation,
            "language": pl_module.hparams.language,
            "task": pl_module.hparams.task,
            "max_tokens": pl_module.hparams.max_tokens,
            "layer_pairs": len(pl_module.pairs),
            "pairs_file": str(data.pairs_file or "starter_pairs.csv"),
            "pairs_sha256": file_sha256(pairs_path(data.pairs_file)),
            "limit": data.limit,
            "bidirectional": data.bidirectional,
            "tts": data.tts,
            "require_heard": data.require_heard,
            "voices": {name: cache.voices for name, cache in datamodule.clips.items()},
            "precision": str(trainer.precision),
        }
