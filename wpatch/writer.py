"""A Lightning prediction writer: tidy rows per batch (atomic, resumable), then the tables, figures and summary.

Every batch's rows go to `parts/items-<first item>.csv` in the output directory, written under a temporary
name and renamed, by whichever process made them. When prediction ends, rank 0 merges the parts into
`predictions.csv` (checked: every item x patch exactly once), then writes the matrices, heatmaps,
`cells.csv` (every group x condition x layer pair, with bootstrap intervals), `summary.json` and the
TensorBoard event file under `tensorboard/`.

A condition is one setting of (site, window, alpha, patch_direction, donor). The layer matrices and their
heatmaps per group are for the primary condition (the first one asked for; the only one by default);
every condition gets an effect heatmap with 95% intervals, and sliding-window sweeps a (layer x time) map.
"""

import json
import re
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import seaborn as sns
from lightning.pytorch.callbacks import BasePredictionWriter
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from wpatch.atomic import atomic_path, write_atomically
from wpatch.errors import WpatchError
from wpatch.module import ROW_COLUMNS
from wpatch.pairs import pairs_path
from wpatch.runfolder import StopOnSignal, claim_folder, code_version, fault_point, file_sha256, record_run

MEASURES = ("override", "transfer", "score", "effect", "p_source_language")  # the last only where languages differ
CONDITION = ["site", "window", "alpha", "patch_direction", "donor"]
ROW_KEY = ["item_id", *CONDITION, "source_layer", "target_layer", "window_start"]
BOOTSTRAP_SAMPLES = 1000


def condition_label(condition: dict) -> str:
    """A condition as a short name: block_out_all_a1_denoising_source."""
    return f"{condition['site']}_{condition['window']}_a{condition['alpha']:g}_{condition['patch_direction']}_{condition['donor']}"


def bootstrap_interval(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of `values`: one value per pair (resampling pairs), or a
    (pairs x voices) table, NaN where a pair was not run with a voice (resampling pairs and voices, so the
    interval covers both the words and the speakers)."""
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if values.ndim == 1:
        means = values[rng.integers(0, len(values), (BOOTSTRAP_SAMPLES, len(values)))].mean(axis=1)
    else:
        rows = rng.integers(0, values.shape[0], (BOOTSTRAP_SAMPLES, values.shape[0], 1))
        columns = rng.integers(0, values.shape[1], (BOOTSTRAP_SAMPLES, 1, values.shape[1]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a draw of only missing cells has no mean
            means = np.nanmean(values[rows, columns].reshape(BOOTSTRAP_SAMPLES, -1), axis=1)
        means = means[~np.isnan(means)]
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def cell_table(groups: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per group x condition x layer pair (x sweep window): means of every measure, and the effect's
    mean over pairs with a bootstrap 95% interval (over pairs, and over voices too when the group has several;
    rows flagged effect_valid false left out)."""
    cells = []
    for group, rows in groups.items():
        rows = rows.assign(sweep_start=np.where(rows["window"] == "sweep", rows["window_start"], -1))
        for key, frame in rows.groupby([*CONDITION, "source_layer", "target_layer", "sweep_start"], sort=False):
            valid = frame[frame["effect_valid"]]
            per_pair = valid.groupby("pair_id")["effect"].mean().to_numpy()
            by_voice = valid.pivot_table(index="pair_id", columns="voice", values="effect", aggfunc="mean")
            low, high = bootstrap_interval(by_voice.to_numpy() if by_voice.shape[1] > 1 else per_pair)
            cells.append({
                "group": group, **dict(zip([*CONDITION, "source_layer", "target_layer", "sweep_start"], key)),
                "items": frame["item_id"].nunique(), "pairs": frame["pair_id"].nunique(),
                **{m: frame[m].astype(float).mean() for m in MEASURES if m != "effect"},
                "effect": per_pair.mean() if len(per_pair) else float("nan"), "effect_low": low, "effect_high": high,
                "effect_pairs": len(per_pair),
            })
    return pd.DataFrame(cells)


def read_rows(path) -> pd.DataFrame:
    """A rows CSV as written: transcripts stay strings (even "" or "NaN"), p_source_language may be empty."""
    return pd.read_csv(path, keep_default_na=False, na_values={"p_source_language": [""], "effect": [""]})


def row_groups(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Named subsets of the rows: all; items whose clean source clip is recognised (the honest denominator);
    each category and its recognised part; each voice when a run has several."""
    groups = {"all": rows, "recognised": rows[rows["source_recognised"]]}
    for category, frame in rows.groupby("category"):
        if category:
            groups[f"category={category}"] = frame
            groups[f"category={category}|recognised"] = frame[frame["source_recognised"]]
    if rows["voice"].nunique() > 1:
        groups |= {f"voice={voice}": frame for voice, frame in rows.groupby("voice")}
    return groups


def voice_spread(groups: dict, voices: list[str], measures: list[str]) -> dict:
    """Per measure, the lowest and highest diagonal and off-diagonal mean over the voices, and their range:
    a finding that holds for one voice only shows up as a wide range."""
    spread = {}
    for measure in measures:
        for key in ("diagonal_mean", "off_diagonal_mean"):
            values = {v: groups[f"voice={v}"][measure][key] for v in voices if measure in groups.get(f"voice={v}", {})}
            values = {v: x for v, x in values.items() if x is not None}
            if values:
                low, high = min(values, key=values.get), max(values, key=values.get)
                spread.setdefault(measure, {})[key] = {"lowest": {low: values[low]}, "highest": {high: values[high]},
                                                       "range": values[high] - values[low]}
    return spread


def file_suffix(group: str) -> str:
    """File-name suffix of a group: '' for all, '_vowel_recognised' for 'category=vowel|recognised'."""
    return "" if group == "all" else "_" + re.sub(r"[^\w.-]", "_", group.replace("category=", "").replace("|", "_").replace("=", "-"))


def layer_matrix(rows: pd.DataFrame, measure: str) -> pd.DataFrame:
    """Mean of `measure` per (source layer, target layer): rows = source layer, columns = target layer."""
    return rows.pivot_table(index="source_layer", columns="target_layer", values=measure, aggfunc="mean").astype(float)


def matrix_summary(matrix: pd.DataFrame) -> dict:
    """Diagonal and off-diagonal means, best and worst cell of a layer matrix."""
    cells = matrix.stack()
    diagonal = cells[[s == t for s, t in cells.index]]
    off = cells[[s != t for s, t in cells.index]]
    return {
        "diagonal_mean": float(diagonal.mean()) if len(diagonal) else None,
        "off_diagonal_mean": float(off.mean()) if len(off) else None,
        "best_cell": {"source_layer": int(cells.idxmax()[0]), "target_layer": int(cells.idxmax()[1]), "value": float(cells.max())},
        "worst_cell": {"source_layer": int(cells.idxmin()[0]), "target_layer": int(cells.idxmin()[1]), "value": float(cells.min())},
    }


def heatmap(matrix: pd.DataFrame, title: str, labels: pd.DataFrame | None = None,
            axis_names=("target layer (recipient block)", "source layer (donor block)")) -> Figure:
    """An annotated seaborn heatmap (a pyplot-free Figure: no GUI backend, no global state); `labels`
    replaces the numbers written in the cells (e.g. with intervals)."""
    width, height = matrix.shape[1], matrix.shape[0]
    scale = 1.0 if labels is None else 1.8
    figure = Figure(figsize=(min(1.1 * scale * width + 2, 24), 0.9 * scale * height + 1.5))
    axes = figure.subplots()
    low = min(0.0, float(np.nanmin(matrix.to_numpy()))) if matrix.notna().any().any() else 0.0
    high = max(1.0, float(np.nanmax(matrix.to_numpy()))) if matrix.notna().any().any() else 1.0
    sns.heatmap(matrix, annot=labels if labels is not None else width <= 16, fmt="" if labels is not None else ".2f",
                vmin=low, vmax=high, cmap="viridis", square=labels is None and width <= 16, ax=axes, cbar_kws={"shrink": 0.8})
    axes.set_xlabel(axis_names[0])
    axes.set_ylabel(axis_names[1])
    axes.set_title(title)
    figure.tight_layout()
    return figure


class PatchingResultsWriter(BasePredictionWriter):
    """Writes predictions.csv, layer matrices (overall and per category), heatmaps, summary.json and TensorBoard.

    The folder is locked while a run uses it, and `run.json` keeps the settings its rows depend on (see
    `wpatch.runfolder`). SIGTERM or SIGINT stops the run before its next batch (`RunStopped`).

    Args:
        output_dir: the run's folder; one that holds a finished run (summary.json) is refused.
        resume: continue an unfinished run in `output_dir` (same settings), skipping items already written;
            a run whose items are all written is merged and finished.
    """

    def __init__(self, output_dir: str = "runs/experiment_a", resume: bool = False):
        super().__init__(write_interval="batch")
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
                raise WpatchError(f"output directory {self.output_dir} already holds a finished run; choose another --writer.output_dir")
            done = self.finished_items()
            if done and not self.resume:
                raise WpatchError(f"output directory {self.output_dir} holds an unfinished run ({len(done)} items); add --writer.resume true to continue it, or choose another directory")
            for stale in [*self.output_dir.glob(".*.partial"), *self.parts.glob(".*.partial")]:
                stale.unlink()  # left by a killed process; the lock says none is writing
            data = datamodule.hparams
            session = {"code_version": code_version(), "accelerator": type(trainer.accelerator).__name__, "devices": trainer.world_size,
                       "batch_size": data.batch_size, "decode_chunk": pl_module.hparams.decode_chunk, "items_done": len(done)}
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
        if len(done) == len(trainer.datamodule.items):  # nothing left to predict (Lightning skips the loop): finish here
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
        return {int(i) for part in self.parts.glob("items-*.csv") for i in pd.read_csv(part, usecols=["item_id"])["item_id"]}

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
        rows = pd.concat([read_rows(p) for p in sorted(self.parts.glob("items-*.csv"))], ignore_index=True)
        rows = rows.sort_values(["item_id"], kind="stable").reset_index(drop=True)
        n_items, per_item = len(trainer.datamodule.items), pl_module.rows_per_item
        if rows.duplicated(ROW_KEY).any() or len(rows) != n_items * per_item:
            raise WpatchError(f"{self.parts} holds {len(rows)} rows, expected {n_items} items x {per_item} patches once each; delete the directory and rerun")
        with atomic_path(self.output_dir / "predictions.csv") as partial:
            rows.to_csv(partial, index=False)
        fault_point("merged")

        measures = [m for m in MEASURES if rows[m].notna().any()]
        groups = row_groups(rows)
        cells = cell_table(groups)
        cells.to_csv(self.output_dir / "cells.csv", index=False)
        conditions = rows[CONDITION].drop_duplicates().to_dict("records")
        primary = next((c for c in conditions if c["window"] != "sweep"), conditions[0])
        in_primary = (rows[CONDITION] == pd.Series(primary)).all(axis=1)
        tensorboard = SummaryWriter(self.output_dir / "tensorboard")
        summary, matrices = {}, {}
        for group, frame in row_groups(rows[in_primary]).items():
            summary[group] = {"items": int(frame["item_id"].nunique()), "rows": len(frame)}
            if frame.empty:
                continue
            for measure in measures:
                matrix = matrices[group, measure] = layer_matrix(frame, measure)
                if matrix.empty:
                    continue
                name = f"{measure}_matrix{file_suffix(group)}"
                matrix.to_csv(self.output_dir / f"{name}.csv")
                summary[group][measure] = matrix_summary(matrix)
                figure = heatmap(matrix, f"{measure} ({group}, {summary[group]['items']} items)")
                figure.savefig(self.output_dir / f"{name}.png", dpi=110)
                tensorboard.add_figure(f"{measure}_matrix/{group}", figure)
                for key in ("diagonal_mean", "off_diagonal_mean"):
                    if summary[group][measure][key] is not None:
                        tensorboard.add_scalar(f"{measure}/{key}/{group}", summary[group][measure][key])
        summary_of_conditions = self.condition_figures(cells[cells["group"] == "all"], conditions, tensorboard)
        voices = sorted(rows["voice"].unique())
        differences = {
            f"{a} vs {b}": {m: float((matrices[f"voice={a}", m] - matrices[f"voice={b}", m]).abs().to_numpy().mean()) for m in measures}
            for i, a in enumerate(voices) for b in voices[i + 1 :]
        }

        settings = self.settings(trainer, pl_module)
        clips = trainer.datamodule.clips.values()
        summary = {**settings, "primary_condition": primary, "wall_time_s": round(time.time() - self.started, 2),
                   "clip_cache": {"synthesised": sum(c.synthesized for c in clips), "resynthesised_damaged": sum(c.repaired for c in clips)},
                   "groups": summary, "conditions": summary_of_conditions}
        if differences:
            summary["voice_differences_mean_abs"] = differences
            summary["voice_spread"] = voice_spread(summary["groups"], voices, measures)
        if trainer.datamodule.screening:
            summary["screening"] = trainer.datamodule.screening
        metrics = {f"hparam/{m}_{k}": summary["groups"]["all"][m][k] for m in measures if m in summary["groups"]["all"]
                   for k in ("diagonal_mean", "off_diagonal_mean") if summary["groups"]["all"][m][k] is not None}
        for event in hparams({k: str(v) if isinstance(v, (list, dict, tuple)) or v is None else v for k, v in settings.items()}, metrics):
            tensorboard.file_writer.add_summary(event)
        for key, value in metrics.items():
            tensorboard.add_scalar(key, value)
        tensorboard.close()
        write_atomically(self.output_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")

    def condition_figures(self, cells: pd.DataFrame, conditions: list[dict], tensorboard: SummaryWriter) -> dict:
        """For each condition: the effect heatmap with 95% intervals (or, for a sweep, the layer x time map),
        saved as PNG and to TensorBoard; returns the effect's diagonal / off-diagonal means per condition."""
        summary = {}
        for condition in conditions:
            label = condition_label(condition)
            mine = cells[(cells[CONDITION] == pd.Series(condition)).all(axis=1)]
            if condition["window"] == "sweep":
                matrix = mine.pivot_table(index="target_layer", columns="sweep_start", values="effect")
                figure = heatmap(matrix, f"effect by layer and window start\n{label}", axis_names=("window start (frame)", "layer (s = t)"))
                name, tag = f"sweep_map_{label}", f"sweep_map/{label}"
                summary[label] = {"effect_mean": float(np.nanmean(matrix.to_numpy())) if matrix.size else None}
            else:
                matrix = mine.pivot_table(index="source_layer", columns="target_layer", values="effect")
                if matrix.empty:
                    summary[label] = {"effect_pairs": 0}
                    continue
                # intervals need two pairs: a cell with one has none (NaN), which pivot_table would drop
                low = mine.pivot_table(index="source_layer", columns="target_layer", values="effect_low", dropna=False).reindex_like(matrix)
                high = mine.pivot_table(index="source_layer", columns="target_layer", values="effect_high", dropna=False).reindex_like(matrix)
                labels = matrix.apply(lambda col: [f"{v:.2f}\n[{lo:.2f}, {hi:.2f}]" for v, lo, hi in zip(col, low[col.name], high[col.name])])
                figure = heatmap(matrix, f"effect, 95% CI over pairs\n{label}", labels=labels)
                name, tag = f"effect_matrix_{label}", f"effect_matrix/{label}"
                summary[label] = {**matrix_summary(matrix), "effect_pairs": int(mine["effect_pairs"].max())}
            figure.savefig(self.output_dir / (re.sub(r"[^\w.-]", "_", name) + ".png"), dpi=110)
            tensorboard.add_figure(tag, figure)
        return summary

    @classmethod
    def settings(cls, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        """The run's settings: model, decoding, data and trainer choices."""
        return {**cls.run_settings(trainer, pl_module, trainer.datamodule),
                "accelerator": type(trainer.accelerator).__name__, "devices": trainer.world_size}

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
