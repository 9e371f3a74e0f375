"""A run's figures: heatmaps on fixed colour scales per measure (`wpatch.rows.SCALES`), interval plots, each
condition's effect map (a layer x time map for sweeps) and the phonetic-feature maps. Figures are pyplot-free
(no GUI backend, no global state) and saved atomically.
"""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from wpatch.analysis.features import feature_map
from wpatch.analysis.tables import cell_matrix, condition_label, matrix_summary, read_matrix
from wpatch.atomic import atomic_path
from wpatch.errors import WpatchError
from wpatch.rows import CONDITION, MEASURE_NAMES, SCALES


def figure_file(name: str) -> str:
    """A figure's file name: `name` with every character unsafe in a path made `_`, and .png."""
    return re.sub(r"[^\w.-]", "_", name) + ".png"


def save_figure(figure: Figure, path: Path) -> None:
    """`figure` as a PNG at `path`, atomically: a killed or failed write leaves no half-written image."""
    with atomic_path(path) as partial:
        figure.savefig(partial, format="png", dpi=110)


def file_suffix(group: str) -> str:
    """File-name suffix of a group: '' for all, '_vowel_recognised' for 'category=vowel|recognised'."""
    name = group.replace("category=", "").replace("|", "_").replace("=", "-")
    return "" if group == "all" else "_" + re.sub(r"[^\w.-]", "_", name)


def number(value: float, digits: int = 2) -> str:
    """A number for a figure or the console: never -0.00."""
    text = f"{value + 0.0:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def heatmap(
    matrix: pd.DataFrame,
    title: str,
    labels: pd.DataFrame | None = None,
    axis_names=("target layer (recipient block)", "source layer (donor block)"),
    measure: str = "score",
    colour_label: str | None = None,
    scale: tuple[float, float] | None = None,
    size: tuple[float, float] | None = None,
) -> Figure:
    """An annotated seaborn heatmap (a pyplot-free Figure: no GUI backend, no global state) on the measure's
    fixed colour scale (`wpatch.rows.SCALES`: 0-1 for rates and score, -1..1 for effect; beyond it the end colour and an
    arrow on the colour bar) with a labelled colour bar;
    `labels` replaces the numbers written in the cells; `scale` (low, high) replaces the measure's, drawn diverging
    (a difference); `size` (inches) replaces the size made for layer matrices."""
    width, height = matrix.shape[1], matrix.shape[0]
    figure = Figure(figsize=size or (min(1.1 * width + 2.5, 24), 0.9 * height + 1.8))
    axes = figure.subplots()
    low, high = scale or SCALES.get(measure, (0.0, 1.0))
    values = matrix.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    # the same scale in every figure of a measure; values beyond it keep the end colour, and the bar says so
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
        bool((finite < low).any()), bool((finite > high).any())
    ]
    if labels is None and width <= 16:
        labels = matrix.map(lambda x: "" if pd.isna(x) else number(x))
    sns.heatmap(
        matrix,
        annot=labels if labels is not None else False,
        fmt="",
        vmin=low,
        vmax=high,
        cmap="RdBu_r" if measure == "effect" or scale else "viridis",
        square=width <= 16,
        ax=axes,
        cbar_kws={"shrink": 0.8, "label": colour_label or MEASURE_NAMES.get(measure, measure), "extend": extend},
    )
    axes.set_xlabel(axis_names[0])
    axes.set_ylabel(axis_names[1])
    axes.set_title(title)
    figure.tight_layout()
    return figure


def interval_figure(cells: pd.DataFrame, title: str) -> Figure:
    """The effect's mean and 95% interval per layer pair, one line each: legible at any size."""
    cells = cells.sort_values(["source_layer", "target_layer"])
    figure = Figure(figsize=(7, 0.28 * len(cells) + 1.6))
    axes = figure.subplots()
    y = np.arange(len(cells))
    low = (cells["effect"] - cells["effect_low"]).clip(lower=0).fillna(0)
    high = (cells["effect_high"] - cells["effect"]).clip(lower=0).fillna(0)
    axes.errorbar(cells["effect"], y, xerr=[low, high], fmt="o", capsize=3)
    axes.axvline(0, color="grey", linewidth=0.8)
    axes.set_yticks(y, [f"{s} -> {t}" for s, t in zip(cells["source_layer"], cells["target_layer"])])
    axes.invert_yaxis()
    axes.set_xlabel("effect, mean over pairs with 95% bootstrap interval")
    axes.set_ylabel("source layer -> target layer")
    axes.set_title(title)
    figure.tight_layout()
    return figure


def condition_title(condition: dict) -> str:
    """A condition in words: 'block_out, whole clip, alpha 1, denoising, donor: source word'."""
    windows = {"all": "whole clip", "word": "word frames", "sweep": "sliding windows", "tokens": "word tokens"}
    window = windows.get(condition["window"], f"frames {condition['window']}")
    return (
        f"{condition['site']}, {window}, alpha {condition['alpha']:g}, {condition['patch_direction']}, "
        f"donor: {condition['donor']} word"
    )


def group_title(group: str, items: int) -> str:
    """A group in words: 'vowel pairs, recognised only (12 items)'."""
    name = {"all": "all items", "recognised": "recognised items"}.get(group)
    if name is None:
        parts = group.split("|")
        name = parts[0].replace("category=", "").replace("voice=", "voice ")
        name += " pairs" if "category=" in group else ""
        name += ", recognised only" if len(parts) > 1 else ""
    return f"{name} ({items} item{'s' if items != 1 else ''})"


SWEEP_AXES = ("window start (frame, 20 ms)", "layer (source = target)")


def condition_figures(cells: pd.DataFrame, conditions: list[dict], figures: Path, tensorboard=None) -> dict:
    """For each condition: the effect heatmap and, separately, its 95% intervals (or, for a sweep, the layer x
    time map), saved as PNG under `figures` (and to TensorBoard when given); returns the effect's diagonal /
    off-diagonal means per condition. A cell with fewer than two pairs has no interval."""
    summary = {}
    for condition in conditions:
        label, title = condition_label(condition), condition_title(condition)
        mine = cells[(cells[CONDITION] == pd.Series(condition)).all(axis=1)]
        if condition["window"] == "sweep":
            matrix = cell_matrix(mine, "effect", "target_layer", "sweep_start")
            figure = heatmap(
                matrix,
                f"effect by layer and window start\n{title}",
                measure="effect",
                axis_names=SWEEP_AXES,
            )
            name, tag = f"sweep_map_{label}", f"sweep_map/{label}"
            effect = matrix.to_numpy()
            summary[label] = {"effect_mean": float(np.nanmean(effect)) if np.isfinite(effect).any() else None}
        else:
            matrix = cell_matrix(mine, "effect")
            if matrix.empty or not matrix.notna().any().any():
                summary[label] = {"effect_pairs": 0}
                continue
            figure = heatmap(matrix, f"effect, mean over pairs\n{title}", measure="effect")
            name, tag = f"effect_matrix_{label}", f"effect_matrix/{label}"
            summary[label] = {**matrix_summary(matrix), "effect_pairs": int(mine["effect_pairs"].max())}
            if mine["effect_low"].notna().any():
                intervals = interval_figure(mine[mine["effect"].notna()], f"effect, 95% intervals\n{title}")
                save_figure(intervals, figures / figure_file(f"effect_intervals_{label}"))
        save_figure(figure, figures / figure_file(name))
        if tensorboard is not None:
            tensorboard.add_figure(tag, figure)
    return summary


def feature_figures(features: pd.DataFrame, conditions: list[dict], figures: Path, tensorboard=None) -> dict:
    """Per condition and phonetic feature (positions pooled): the effect map (source x target layer, or layer x
    window start for a sweep) as figures/feature_<feature>_<condition>.png; for a sweep of a feature changed at
    several positions (onset, coda), one map per position too (feature_<feature>_<position>_<condition>.png).
    Returns per feature its pairs and, per condition, the effect's diagonal / off-diagonal means or, for a sweep,
    where the effect peaks (per position under "by_position")."""
    summary = {}
    for feature in sorted(features["feature"].unique()):
        of_feature = features[features["feature"] == feature]
        positions = sorted(of_feature["position"].unique().tolist())
        summary[feature] = {
            "pairs": int(of_feature[of_feature["position"] == "all"]["pairs"].max()),
            "positions": positions,
        }
        for condition in conditions:
            label, sweep = condition_label(condition), condition["window"] == "sweep"
            several = [p for p in positions if p != "all"] if sweep and len(positions) > 2 else []
            for position in ["all", *several]:
                matrix = feature_map(features, feature, condition, position)
                if matrix.empty or not matrix.notna().any().any():
                    continue
                pairs = int(of_feature[of_feature["position"] == position]["pairs"].max())
                where = "" if position == "all" else f" in the {position}"
                title = f"effect when the pair changes {feature}{where} ({pairs} pairs)\n{condition_title(condition)}"
                if sweep:
                    figure = heatmap(matrix, title, measure="effect", axis_names=SWEEP_AXES)
                    layer, start = matrix.stack().idxmax()
                    found = {
                        "peak_layer": int(layer),
                        "peak_window_start": int(start),
                        "peak_effect": matrix.max().max(),
                    }
                else:
                    figure = heatmap(matrix, title, measure="effect")
                    found = matrix_summary(matrix)
                name = f"{feature}_{label}" if position == "all" else f"{feature}_{position}_{label}"
                if position == "all":
                    summary[feature][label] = found
                else:
                    summary[feature].setdefault("by_position", {}).setdefault(position, {})[label] = found
                save_figure(figure, figures / figure_file(f"feature_{name}"))
                if tensorboard is not None:
                    tensorboard.add_figure(f"feature/{name.replace(f'{feature}_', f'{feature}/', 1)}", figure)
    return summary


def plot_matrix(run, measure: str = "score", group: str = "all") -> Figure:
    """The heatmap of one matrix of a saved run (its folder): e.g. `plot_matrix("runs/experiment_a", "effect")`."""
    matrices = pd.read_csv(Path(run) / "matrices.csv", keep_default_na=False, na_values={"low": [""], "high": [""]})
    mine = matrices[(matrices["group"] == group) & (matrices["measure"] == measure)]
    if mine.empty:
        have = sorted(set(matrices["group"])), sorted(set(matrices["measure"]))
        raise WpatchError(
            f"run {run} has no {measure} matrix for group {group!r} (no items, or no values); groups: "
            f"{', '.join(have[0])}; measures: {', '.join(have[1])}"
        )
    matrix = read_matrix(matrices, measure, group)
    items = int(mine["n"].max())
    return heatmap(matrix, f"{MEASURE_NAMES.get(measure, measure)}\n{group_title(group, items)}", measure=measure)
