"""A Lightning prediction writer: a write hook per batch, the merge, then the analysis.

Every batch's rows are a part (`wpatch.run_folder.parts`), written by whichever process made them. Before any work the
process that starts the run claims its folder (`wpatch.run_folder.folder`: lock, run.json with
`wpatch.run_folder.settings`), and a resume redoes only the parts that do not match their records. When prediction ends,
rank 0 merges the parts into `predictions.csv` (checked: every item x patch exactly once) and hands the rows, with the
run's settings, to `wpatch.analysis.analyse` (matrices, heatmaps, `cells.csv`, TensorBoard, `report.md`, then
`summary.json`).
"""

import sys
import time
from dataclasses import asdict
from pathlib import Path

import lightning as L
import pandas as pd
from lightning.pytorch.callbacks import BasePredictionWriter

from wpatch.analysis.console import closing_lines
from wpatch.analysis.depth import model_card
from wpatch.analysis.features import write_pair_features
from wpatch.analysis.summary import analyse
from wpatch.analysis.tables import ROW_KEY, read_rows
from wpatch.atomic import atomic_path
from wpatch.errors import WpatchError
from wpatch.faults import fault_point
from wpatch.rows import ROW_COLUMNS
from wpatch.run_folder.attributions import merge_attributions, write_attribution_part
from wpatch.run_folder.clips import copy_clips, read_heard, write_heard_part
from wpatch.run_folder.folder import (
    STOP,
    StopOnSignal,
    check_writable,
    claim_folder,
    record_run,
    remove_partials,
    way_out,
)
from wpatch.run_folder.parts import finished_items, part_problem, verified_parts, write_part
from wpatch.run_folder.settings import environment, run_settings, session, setting_defaults, summary_settings
from wpatch.run_folder.table import record_table


class PatchingResultsWriter(BasePredictionWriter):
    """Writes predictions.csv, layer matrices (overall and per category), heatmaps, summary.json and TensorBoard.

    The folder is locked while a run uses it, and `run.json` keeps the settings its rows depend on (see
    `wpatch.run_folder.folder`). SIGTERM or SIGINT stops the run before its next batch, or its next clip while clips are
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
        self.items = None  # each item's own columns of the table, by item id (set up with the DataModule)

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
            (self.output_dir / STOP).unlink(missing_ok=True)  # an earlier session's stop, not this one's
            remove_partials(self.output_dir, self.parts, self.output_dir / "figures", self.output_dir / "clips")
            settings = run_settings(pl_module, datamodule, trainer.precision)
            defaults = setting_defaults(type(pl_module), type(datamodule))
            record_run(
                self.output_dir, settings, session(trainer, pl_module, datamodule, len(done)), self.resume, defaults
            )
            verified_parts(self.parts, repair=True)
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
        self.items = trainer.datamodule.item_columns()
        done = self.finished_items()
        if done:
            trainer.datamodule.skip(done)
        self.session_started = trainer.strategy.broadcast(self.session_started, src=0)
        self.stop.children = getattr(trainer.strategy.launcher, "procs", [])  # DDP processes this one launched
        self.stop.flag = self.output_dir / STOP  # a rank that stops tells the others, on any node, through it
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

    def with_items(self, rows: list[dict]) -> pd.DataFrame:
        """Rows the module computed, with their items' own columns (who the item is, what passes through from the
        pairs file: `datamodules.PairDataModule.item_columns`) joined by item id."""
        return pd.DataFrame(rows).merge(self.items, on="item_id", how="left", validate="many_to_one")

    def finished_items(self) -> set[int]:
        """Item ids already written, in parts that match their records (`wpatch.run_folder.parts`)."""
        return finished_items(self.parts)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if not prediction:
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        found = prediction.get("attributions") if isinstance(prediction, dict) else None
        frame = self.with_items(prediction["rows"] if found else prediction)[ROW_COLUMNS]
        try:
            if found:  # before the rows part, whose record marks the batch done
                write_attribution_part(self.parts, int(frame["item_id"].min()), self.with_items(found.rows), found)
            if getattr(pl_module, "heard", None):
                write_heard_part(self.parts, pl_module.heard)
            write_part(self.parts / f"items-{frame['item_id'].min():08d}.csv", frame, self.session_started)
        except OSError as error:
            raise self.not_written(error) from None
        self.parts_written += 1
        if trainer.is_global_zero:
            fault_point(f"part{self.parts_written}")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        try:
            trainer.strategy.barrier()
        except RuntimeError:  # a rank ended while this one waited: if it stopped on a signal, stop too
            self.stop.check()
            raise
        if trainer.is_global_zero:
            self.finish(trainer, pl_module)
        trainer.strategy.barrier()

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Merge the parts and write every table, figure and the summary (rank 0 only)."""
        if self.verbose:
            print("writing predictions.csv, tables, figures and report.md ...", file=sys.stderr, flush=True)
        parts = verified_parts(self.parts)  # checked again: a part damaged since the run started is not merged
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
        """One line for a file the run could not write (a full disk, a file system gone read-only): which file, why,
        what is kept, what to do about it (`way_out`) and the command that continues the run."""
        return WpatchError(
            f"could not write {error.filename or 'a file of the run'} ({error.strerror or error}); every finished "
            f"part is kept; {way_out(error)}, then continue with: {self.go_on()}"
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
        record_table(self.output_dir)  # what `wpatch report` and `load_run` check the table against
        merge_attributions(self.parts, self.output_dir, set(rows["item_id"].tolist()))
        fault_point("merged")

        # the clips report.html plays, in the run's folder, with what the model heard of each
        copy_clips(trainer.datamodule, self.output_dir, read_heard(self.parts))
        write_pair_features(self.output_dir, trainer.datamodule.read_pairs())  # what the analysis reads of the pairs
        recorded = trainer.datamodule.recorded()  # clip cache, screening, silent clips, word frames, shard
        recorded.wall_time_s = round(self.working_time(records), 2)
        settings = summary_settings(trainer, pl_module)
        recorded.environment = environment(trainer, settings["batch_size"])
        recorded.model_card = asdict(model_card(settings["model"]))
        summary = analyse(rows, self.output_dir, settings, recorded)
        # printed by the command once the progress bar has closed (`wpatch.cli.predict`)
        self.closing = closing_lines(rows, summary, self.output_dir, recorded.wall_time_s)
