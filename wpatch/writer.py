"""A Lightning prediction writer: tidy rows per batch (atomic, resumable), then the tables, figures and summary.

Every batch's rows go to `parts/items-<first item>.csv` in the output directory, written under a temporary
name and renamed, by whichever process made them. When prediction ends, rank 0 merges the parts into
`predictions.csv` (checked: every item x layer pair exactly once), then writes the matrices, heatmaps,
`summary.json` and the TensorBoard event file under `tensorboard/`.
"""

import json
import os
import time
from pathlib import Path

import lightning as L
import pandas as pd
import seaborn as sns
from lightning.pytorch.callbacks import BasePredictionWriter
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from wpatch.errors import WpatchError
from wpatch.module import ROW_COLUMNS

MEASURES = ("override", "transfer", "score", "p_source_language")  # the last only where languages differ


def read_rows(path) -> pd.DataFrame:
    """A rows CSV as written: transcripts stay strings (even "" or "NaN"), p_source_language may be empty."""
    return pd.read_csv(path, keep_default_na=False, na_values={"p_source_language": [""]})


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


def file_suffix(group: str) -> str:
    """File-name suffix of a group: '' for all, '_vowel_recognised' for 'category=vowel|recognised'."""
    return "" if group == "all" else "_" + group.replace("category=", "").replace("|", "_").replace("=", "-")


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


def heatmap(matrix: pd.DataFrame, title: str) -> Figure:
    """An annotated seaborn heatmap of a layer matrix (a pyplot-free Figure: no GUI backend, no global state)."""
    figure = Figure(figsize=(1.1 * matrix.shape[1] + 2, 0.9 * matrix.shape[0] + 1.5))
    axes = figure.subplots()
    sns.heatmap(matrix, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", square=True, ax=axes, cbar_kws={"shrink": 0.8})
    axes.set_xlabel("target layer (block replaced)")
    axes.set_ylabel("source layer (state taken)")
    axes.set_title(title)
    figure.tight_layout()
    return figure


class PatchingResultsWriter(BasePredictionWriter):
    """Writes predictions.csv, layer matrices (overall and per category), heatmaps, summary.json and TensorBoard.

    Args:
        output_dir: the run's folder; one that holds a finished run (summary.json) is refused.
        resume: continue an unfinished run in `output_dir`, skipping items already written.
    """

    def __init__(self, output_dir: str = "runs/experiment_a", resume: bool = False):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.resume = resume
        self.parts = self.output_dir / "parts"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if (self.output_dir / "summary.json").exists():
            raise WpatchError(f"output directory {self.output_dir} already holds a finished run; choose another --writer.output_dir")
        done = self.finished_items()
        if done and not self.resume:
            raise WpatchError(f"output directory {self.output_dir} holds an unfinished run ({len(done)} items); add --writer.resume true to continue it, or choose another directory")
        if done:
            trainer.datamodule.skip(done)
        self.started = time.time()

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
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        frame.to_csv(partial, index=False)
        os.replace(partial, path)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            self.finish(trainer, pl_module)
        trainer.strategy.barrier()

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Merge the parts and write every table, figure and the summary (rank 0 only)."""
        rows = pd.concat([read_rows(p) for p in sorted(self.parts.glob("items-*.csv"))], ignore_index=True)
        rows = rows.sort_values(["item_id", "source_layer", "target_layer"]).reset_index(drop=True)
        n_items, n_pairs = len(trainer.datamodule.items), len(pl_module.pairs)
        if rows.duplicated(["item_id", "source_layer", "target_layer"]).any() or len(rows) != n_items * n_pairs:
            raise WpatchError(f"{self.parts} holds {len(rows)} rows, expected {n_items} items x {n_pairs} layer pairs once each; delete the directory and rerun")
        rows.to_csv(self.output_dir / "predictions.csv", index=False)

        measures = [m for m in MEASURES if rows[m].notna().any()]
        tensorboard = SummaryWriter(self.output_dir / "tensorboard")
        summary, matrices = {}, {}
        for group, frame in row_groups(rows).items():
            summary[group] = {"items": int(frame["item_id"].nunique()), "rows": len(frame)}
            if frame.empty:
                continue
            for measure in measures:
                matrix = matrices[group, measure] = layer_matrix(frame, measure)
                name = f"{measure}_matrix{file_suffix(group)}"
                matrix.to_csv(self.output_dir / f"{name}.csv")
                summary[group][measure] = matrix_summary(matrix)
                figure = heatmap(matrix, f"{measure} ({group}, {summary[group]['items']} items)")
                figure.savefig(self.output_dir / f"{name}.png", dpi=110)
                tensorboard.add_figure(f"{measure}_matrix/{group}", figure)
                for key in ("diagonal_mean", "off_diagonal_mean"):
                    if summary[group][measure][key] is not None:
                        tensorboard.add_scalar(f"{measure}/{key}/{group}", summary[group][measure][key])
        voices = sorted(rows["voice"].unique())
        differences = {
            f"{a} vs {b}": {m: float((matrices[f"voice={a}", m] - matrices[f"voice={b}", m]).abs().to_numpy().mean()) for m in measures}
            for i, a in enumerate(voices) for b in voices[i + 1 :]
        }

        settings = self.settings(trainer, pl_module)
        summary = {**settings, "wall_time_s": round(time.time() - self.started, 2), "groups": summary}
        if differences:
            summary["voice_differences_mean_abs"] = differences
        metrics = {f"hparam/{m}_{k}": summary["groups"]["all"][m][k] for m in measures for k in ("diagonal_mean", "off_diagonal_mean")}
        for event in hparams({k: str(v) if isinstance(v, (list, dict)) or v is None else v for k, v in settings.items()}, metrics):
            tensorboard.file_writer.add_summary(event)
        for key, value in metrics.items():
            tensorboard.add_scalar(key, value)
        tensorboard.close()
        partial = self.output_dir / ".summary.json.partial"
        partial.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(partial, self.output_dir / "summary.json")

    @staticmethod
    def settings(trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        """The run's settings: model, decoding, data and trainer choices."""
        data = trainer.datamodule.hparams
        return {
            "model": pl_module.hparams.model,
            "patch": "whole block output, all positions",
            "language": pl_module.hparams.language,
            "task": pl_module.hparams.task,
            "max_tokens": pl_module.hparams.max_tokens,
            "layer_pairs": len(pl_module.pairs),
            "pairs_file": str(data.pairs_file or "starter_pairs.csv"),
            "limit": data.limit,
            "bidirectional": data.bidirectional,
            "tts": data.tts,
            "voices": {name: cache.voices for name, cache in trainer.datamodule.clips.items()},
            "precision": str(trainer.precision),
            "accelerator": type(trainer.accelerator).__name__,
            "devices": trainer.world_size,
        }
