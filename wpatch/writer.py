"""A Lightning prediction writer: the run's I/O. Tidy rows per batch (atomic, resumable), the merge, then
the analysis (`wpatch.analysis`) on the merged rows.

Every batch's rows go to `parts/items-<first item>.csv` in the output directory, written under a temporary
name and renamed, by whichever process made them; then its record `parts/items-<first item>.json` (rows, bytes,
sha256, item ids), the same way. Only a part that matches its record counts as done: on a resume, and again
before the merge, a part cut short, damaged, or without its record (the run stopped before it was complete) is
computed again, alone, with a warning. When prediction ends, rank 0 merges the parts into `predictions.csv`
(checked: every item x patch exactly once) and hands the rows, with the run's settings, to
`wpatch.analysis.analyse` (matrices, heatmaps, `cells.csv`, TensorBoard, `report.md`, then `summary.json`).
"""

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import lightning as L
import pandas as pd
from lightning.pytorch.callbacks import BasePredictionWriter

from wpatch.analysis import ROW_KEY, analyse, console_table, read_rows
from wpatch.atomic import atomic_path, write_atomically
from wpatch.errors import WpatchError
from wpatch.pairs import pairs_path
from wpatch.rows import ROW_COLUMNS
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


def warn(message: str) -> None:
    print(f"wpatch: warning: {message}", file=sys.stderr, flush=True)


def part_record(part: Path) -> Path:
    """Where the record of a part (`parts/items-<first item>.csv`) is kept."""
    return part.with_suffix(".json")


def write_part(part: Path, frame: pd.DataFrame, session_started: float | None = None) -> None:
    """Write a part, then its record (rows, bytes, sha256, item ids; when the session that made it started and
    when it was written, for the run's wall time), each atomically: a part without its record was cut off before
    it was complete."""
    data = frame.to_csv(index=False).encode("utf-8")
    write_atomically(part, data)
    record = {
        "rows": len(frame),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "items": sorted(int(i) for i in frame["item_id"].unique()),
        "session_started": session_started,
        "written": time.time(),
    }
    write_atomically(part_record(part), json.dumps(record) + "\n")


def part_problem(part: Path) -> tuple[dict | None, str | None]:
    """A part's record, and what is wrong with the part (None when its bytes are the ones recorded)."""
    try:
        record = json.loads(part_record(part).read_text())
        recorded, size, _, _ = record["sha256"], record["bytes"], record["rows"], record["items"]
    except FileNotFoundError:
        return None, "has no record (the run stopped before the part was complete)"
    except (ValueError, KeyError, TypeError):
        return None, "has an unreadable record"
    data = part.read_bytes()
    if len(data) != size:
        return record, f"is {len(data)} bytes, not the {size} its record says (cut short or damaged)"
    if hashlib.sha256(data).hexdigest() != recorded:
        return record, "does not match the sha256 its record says (damaged)"
    return record, None


class PatchingResultsWriter(BasePredictionWriter):
    """Writes predictions.csv, layer matrices (overall and per category), heatmaps, summary.json and TensorBoard.

    The folder is locked while a run uses it, and `run.json` keeps the settings its rows depend on (see
    `wpatch.runfolder`). SIGTERM or SIGINT stops the run before its next batch, or its next clip while clips are
    synthesised (`RunStopped`).

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
        self.session_started = None  # when this session claimed the folder (time.time(); every rank has rank 0's)

    def claim(self, trainer: L.Trainer, pl_module: L.LightningModule, datamodule: L.LightningDataModule) -> None:
        """Before any work, on the process that starts the run: lock the folder (checking that it is writable),
        refuse a finished run or an unasked resume, and store (or, resuming, check) the settings in run.json."""
        if self.lock is not None:
            return
        self.lock = claim_folder(self.output_dir)
        self.session_started = time.time()
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
            for folder in (self.output_dir, self.parts, self.output_dir / "figures"):
                for stale in folder.glob(".*.partial"):  # left by a killed process; the lock says none is writing
                    shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
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
            self.verified_parts(repair=True)
            datamodule.stop_check = self.stop.check  # a signal during clip synthesis stops it before the next clip
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
        self.session_started = trainer.strategy.broadcast(self.session_started, src=0)
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

    def verified_parts(self, repair: bool = False) -> dict[Path, dict]:
        """The parts whose bytes are the ones their records say, with their records. With `repair` (rank 0, before
        any work), every other part (cut short, damaged, without a record) and every record without its part is
        deleted, with a warning that names it, so that its items are computed again."""
        if not self.parts.is_dir():
            return {}
        verified = {}
        for part in sorted(self.parts.glob("items-*.csv")):
            record, problem = part_problem(part)
            if problem is None:
                verified[part] = record
            elif repair:
                warn(f"part {part} {problem}; computing its items again")
                part_record(part).unlink(missing_ok=True)
                part.unlink()
        for record in sorted(self.parts.glob("items-*.json")) if repair else []:
            if not record.with_suffix(".csv").exists():
                warn(f"part {record.with_suffix('.csv')} is missing (its record is there); computing its items again")
                record.unlink()
        return verified

    def finished_items(self) -> set[int]:
        """Item ids already written, by earlier or current processes, in parts that match their records."""
        return {int(i) for record in self.verified_parts().values() for i in record["items"]}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if not prediction:
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(prediction, columns=ROW_COLUMNS)
        try:
            write_part(self.parts / f"items-{frame['item_id'].min():08d}.csv", frame, self.session_started)
        except OSError as error:
            raise self.not_written(error) from None
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
        parts = self.verified_parts()  # checked again: a part damaged since the run started is not merged
        damaged = sorted(set(self.parts.glob("items-*.csv")) - set(parts))
        if damaged:
            raise WpatchError(
                f"part {damaged[0]} {part_problem(damaged[0])[1]}; its items are computed again by: {self.go_on()}"
            )
        rows = pd.concat([read_rows(p) for p in parts], ignore_index=True)
        rows = rows.sort_values(["item_id"], kind="stable").reset_index(drop=True)
        n_items, per_item = len(trainer.datamodule.items), pl_module.rows_per_item
        if rows.duplicated(ROW_KEY).any() or len(rows) != n_items * per_item:
            missing = n_items - rows["item_id"].nunique()  # parts lost since the run started: a resume makes them
            way_out = (
                f"its {missing} missing items are computed by: {self.go_on()}"
                if missing > 0 and not rows.duplicated(ROW_KEY).any()
                else "delete the directory and rerun"
            )
            raise WpatchError(
                f"{self.parts} holds {len(rows)} rows, expected {n_items} items x {per_item} patches once each; "
                + way_out
            )
        try:
            self.write_tables(trainer, pl_module, rows, list(parts.values()))
        except OSError as error:
            raise self.not_written(error) from None

    def not_written(self, error: OSError) -> WpatchError:
        """One line for a file the run could not write (a full disk, say): which file, why, what is kept, and the
        command that continues the run."""
        return WpatchError(
            f"could not write {error.filename or 'a file of the run'} ({error.strerror or error}); every finished "
            f"part is kept; make room, then continue with: {self.go_on()}"
        )

    def go_on(self) -> str:
        """The command that continues this run (as `wpatch.cli` made it; else what it needs)."""
        return self.stop.resume_command or "the same settings and --writer.resume true"

    def working_time(self, records) -> float:
        """Seconds the run's sessions worked, summed (summary.json's `wall_time_s`): each earlier session from
        claiming the folder to the last of its parts that is kept (the parts' records say when), this one from
        claiming it to now. Time between sessions, and work lost to a kill (parts never completed), is not counted."""
        ends = {}
        for record in records:
            started = record.get("session_started")
            if started is not None and started != self.session_started:
                ends[started] = max(ends.get(started, started), record["written"])
        return sum(end - started for started, end in ends.items()) + time.time() - self.session_started

    def write_tables(self, trainer: L.Trainer, pl_module: L.LightningModule, rows: pd.DataFrame, records) -> None:
        """predictions.csv, then every table, figure and the summary (`wpatch.analysis.analyse`); `records`: the
        merged parts' records (for the wall time)."""
        with atomic_path(self.output_dir / "predictions.csv") as partial:
            rows.to_csv(partial, index=False)
            fault_point("merging")
        fault_point("merged")

        clips = trainer.datamodule.clips.values()
        extra = {
            "wall_time_s": round(self.working_time(records), 2),
            "clip_cache": {
                "synthesised": sum(c.synthesized for c in clips),
                "resynthesised_damaged": sum(c.repaired for c in clips),
            },
        }
        if trainer.datamodule.screening:
            extra["screening"] = trainer.datamodule.screening
        extra["silent_clips"] = getattr(trainer.datamodule, "silent_clips", [])  # clips without speech, still run
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
            "layer_pairs": len(pl_module.layer_pairs),
            "pairs_file": str(data.pairs_file or "starter_pairs.csv"),
            "pairs_sha256": file_sha256(pairs_path(data.pairs_file)),
            "limit": data.limit,
            "bidirectional": data.bidirectional,
            "tts": data.tts,
            "require_heard": data.require_heard,
            "voices": {name: cache.voices for name, cache in datamodule.clips.items()},
            "precision": str(trainer.precision),
        }
