"""The analysis of a run, from its rows alone: groups, layer matrices, bootstrap intervals, summary and figures.

Everything here works on a `predictions.csv` (or the DataFrame read from one), with no Trainer: the writer
calls `write_report` when a run ends, and `wpatch report RUN_DIR` (or `write_report(read_rows(...), dir)`)
re-runs it on a saved run. `load_run(dir)` reads a run back: its rows and its summary.

A condition is one setting of (site, window, alpha, patch_direction, donor). The layer matrices and their
heatmaps per group are for the primary condition (the first one that is not a sweep); every condition gets
an effect heatmap with 95% intervals, and sliding-window sweeps a (layer x time) map.
"""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from wpatch.atomic import atomic_path, write_atomically
from wpatch.errors import WpatchError
from wpatch.features import feature_cells, feature_map, run_features
from wpatch.rows import BLANK_IS_NAN, CONDITION, MEASURE_NAMES, MEASURES, SCALES, TEXT_COLUMNS, with_sweep_start
from wpatch.runfolder import fault_point
from wpatch.sites import BLOCK_OUT
from wpatch.stats import bootstrap_interval, pooled_interval

ROW_KEY = ["item_id", *CONDITION, "source_layer", "target_layer", "window_start"]


def condition_label(condition: dict) -> str:
    """A condition as a short name: block_out_all_a1_denoising_source."""
    c = condition
    return f"{c['site']}_{c['window']}_a{c['alpha']:g}_{c['patch_direction']}_{c['donor']}"


def cell_table(groups: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per group x condition x layer pair (x sweep window): means of every measure, and the effect's
    mean over pairs with a bootstrap 95% interval (over pairs, and over voices too when the group has several;
    rows flagged effect_valid false left out)."""
    cells = []
    for group, rows in groups.items():
        rows = with_sweep_start(rows)
        for key, frame in rows.groupby([*CONDITION, "source_layer", "target_layer", "sweep_start"], sort=False):
            effect, low, high, pairs = pooled_interval(frame[frame["effect_valid"]], "effect")
            cells.append(
                {
                    "group": group,
                    **dict(zip([*CONDITION, "source_layer", "target_layer", "sweep_start"], key)),
                    "items": frame["item_id"].nunique(),
                    "pairs": frame["pair_id"].nunique(),
                    **{m: frame[m].astype(float).mean() for m in MEASURES if m != "effect"},
                    "effect": effect,
                    "effect_low": low,
                    "effect_high": high,
                    "effect_pairs": pairs,
                }
            )
    return pd.DataFrame(cells)


def read_rows(path) -> pd.DataFrame:
    """A rows CSV as written: text columns stay strings (even "", "NaN" or "1"), p_source_language and effect
    may be empty (NaN)."""
    return pd.read_csv(
        path,
        keep_default_na=False,
        na_values={column: [""] for column in BLANK_IS_NAN},
        dtype={column: str for column in TEXT_COLUMNS},
    )


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
                spread.setdefault(measure, {})[key] = {
                    "lowest": {low: values[low]},
                    "highest": {high: values[high]},
                    "range": values[high] - values[low],
                }
    return spread


def figure_file(name: str) -> str:
    """A figure's file name: `name` with every character unsafe in a path made `_`, and .png."""
    return re.sub(r"[^\w.-]", "_", name) + ".png"


def save_figure(figure: Figure, path: Path) -> None:
    """`figure` as a PNG at `path`, atomically: a killed or failed write leaves no half-written image."""
    with atomic_path(path) as partial:
        figure.savefig(partial, format="png", dpi=110)


def publish_events(staging: Path, folder: Path) -> None:
    """Move the closed TensorBoard event file(s) in `staging` into `folder`, in place of those there (an earlier
    attempt's, complete or cut short), so a run's `tensorboard/` holds one file however often its report was made."""
    folder.mkdir(exist_ok=True)
    for old in folder.glob("events.out.tfevents.*"):
        old.unlink()
    for new in sorted(staging.iterdir()):
        os.replace(new, folder / new.name)
    staging.rmdir()


def file_suffix(group: str) -> str:
    """File-name suffix of a group: '' for all, '_vowel_recognised' for 'category=vowel|recognised'."""
    name = group.replace("category=", "").replace("|", "_").replace("=", "-")
    return "" if group == "all" else "_" + re.sub(r"[^\w.-]", "_", name)


def layer_matrix(rows: pd.DataFrame, measure: str) -> pd.DataFrame:
    """Mean of `measure` per (source layer, target layer): rows = source layer, columns = target layer."""
    return rows.pivot_table(index="source_layer", columns="target_layer", values=measure, aggfunc="mean").astype(float)


def matrix_summary(matrix: pd.DataFrame) -> dict:
    """Diagonal and off-diagonal means, best and worst cell of a layer matrix (None where it has no values)."""
    cells = matrix.stack().dropna()
    diagonal = cells[[s == t for s, t in cells.index]]
    off = cells[[s != t for s, t in cells.index]]

    def cell(index) -> dict | None:
        return (
            None
            if not len(cells)
            else {"source_layer": int(index[0]), "target_layer": int(index[1]), "value": float(cells[index])}
        )

    return {
        "diagonal_mean": float(diagonal.mean()) if len(diagonal) else None,
        "off_diagonal_mean": float(off.mean()) if len(off) else None,
        "best_cell": cell(cells.idxmax() if len(cells) else None),
        "worst_cell": cell(cells.idxmin() if len(cells) else None),
    }


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
) -> Figure:
    """An annotated seaborn heatmap (a pyplot-free Figure: no GUI backend, no global state) on the measure's
    fixed colour scale (`wpatch.rows.SCALES`: 0-1 for rates and score, -1..1 for effect; beyond it the end colour and an
    arrow on the colour bar) with a labelled colour bar;
    `labels` replaces the numbers written in the cells."""
    width, height = matrix.shape[1], matrix.shape[0]
    figure = Figure(figsize=(min(1.1 * width + 2.5, 24), 0.9 * height + 1.8))
    axes = figure.subplots()
    low, high = SCALES.get(measure, (0.0, 1.0))
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
        cmap="RdBu_r" if measure == "effect" else "viridis",
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


def primary_condition(rows: pd.DataFrame) -> dict:
    """The condition the layer matrices are for: the first one asked for that is not a sweep."""
    conditions = rows[CONDITION].drop_duplicates().to_dict("records")
    return next((c for c in conditions if c["window"] != "sweep"), conditions[0])


def cell_matrix(cells: pd.DataFrame, value: str, index="source_layer", columns="target_layer") -> pd.DataFrame:
    """One column of a cells table as a matrix, every cell kept (NaN where a value is missing)."""
    matrix = cells.groupby([index, columns])[value].mean().unstack(columns)
    return matrix.astype(float)


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


def long_matrices(frame: pd.DataFrame, group: str, measures: list[str]) -> pd.DataFrame:
    """A group's layer matrices in long form: one row per measure x (source, target) cell with the mean over
    items, a bootstrap 95% interval over pairs (NaN with fewer than two) and the number of items with a value."""
    out = []
    for measure in measures:
        values = frame[["source_layer", "target_layer", "pair_id", "item_id", measure]].dropna(subset=[measure])
        for (s, t), cell in values.groupby(["source_layer", "target_layer"]):
            low, high = bootstrap_interval(cell.groupby("pair_id")[measure].mean().to_numpy(dtype=float))
            out.append(
                {
                    "group": group,
                    "measure": measure,
                    "s": int(s),
                    "t": int(t),
                    "mean": float(cell[measure].astype(float).mean()),
                    "low": low,
                    "high": high,
                    "n": int(cell["item_id"].nunique()),
                }
            )
    return pd.DataFrame(out, columns=["group", "measure", "s", "t", "mean", "low", "high", "n"])


def read_matrix(matrices: pd.DataFrame, measure: str, group: str = "all", value: str = "mean") -> pd.DataFrame:
    """One matrix out of a run's `matrices.csv`: rows = source layer, columns = target layer."""
    mine = matrices[(matrices["group"] == group) & (matrices["measure"] == measure)]
    return mine.pivot_table(index="s", columns="t", values=value, aggfunc="mean", dropna=False).astype(float)


def plot_matrix(run, measure: str = "score", group: str = "all") -> Figure:
    """The heatmap of one matrix of a saved run (its folder): e.g. `plot_matrix("runs/experiment_a", "effect")`."""
    matrices = pd.read_csv(Path(run) / "matrices.csv", keep_default_na=False, na_values={"low": [""], "high": [""]})
    matrix = read_matrix(matrices, measure, group)
    items = int(matrices[(matrices["group"] == group) & (matrices["measure"] == measure)]["n"].max())
    return heatmap(matrix, f"{MEASURE_NAMES.get(measure, measure)}\n{group_title(group, items)}", measure=measure)


def analyse(
    rows: pd.DataFrame, output_dir, settings: dict | None = None, extra: dict | None = None, tensorboard: bool = True
) -> dict:
    """Write cells.csv, the layer matrices (CSV and PNG) per group, the effect figures, the TensorBoard event
    file (`tensorboard=True`), report.md and, last, summary.json for these rows into `output_dir`; returns the
    summary. Every file is written atomically; summary.json, last, marks the run finished.

    `settings` (the run's settings) lead the summary, `extra` (e.g. wall time, clip cache) follows them."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = dict(settings or {})
    measures = [m for m in MEASURES if rows[m].notna().any()]
    cells = cell_table(row_groups(rows))
    write_atomically(output_dir / "cells.csv", cells.to_csv(index=False))
    conditions = rows[CONDITION].drop_duplicates().to_dict("records")
    primary = primary_condition(rows)
    in_primary = (rows[CONDITION] == pd.Series(primary)).all(axis=1)
    board = None
    staging = output_dir / f".tensorboard.{os.getpid()}.partial"  # the event file is written here, then moved
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        shutil.rmtree(staging, ignore_errors=True)
        board = SummaryWriter(staging)
    figures = output_dir / "figures"
    figures.mkdir(exist_ok=True)
    groups, matrices, long = {}, {}, []
    for group, frame in row_groups(rows[in_primary]).items():
        groups[group] = {"items": int(frame["item_id"].nunique()), "rows": len(frame)}
        if frame.empty:
            continue
        long.append(long_matrices(frame, group, measures))
        for measure in measures:
            matrix = matrices[group, measure] = layer_matrix(frame, measure)
            if matrix.empty or not matrix.notna().any().any():
                continue
            groups[group][measure] = matrix_summary(matrix)
            if group not in ("all", "recognised"):
                continue  # figures for the two main groups; every group's numbers are in matrices.csv
            title = f"{MEASURE_NAMES.get(measure, measure)}\n{group_title(group, groups[group]['items'])}"
            figure = heatmap(matrix, title, measure=measure)
            save_figure(figure, figures / f"{measure}_matrix{file_suffix(group)}.png")
            if board is not None:
                board.add_figure(f"{measure}_matrix/{group}", figure)
    write_atomically(
        output_dir / "matrices.csv",
        pd.concat(long, ignore_index=True).to_csv(index=False) if long else "group,measure,s,t,mean,low,high,n\n",
    )
    conditions_summary = condition_figures(cells[cells["group"] == "all"], conditions, figures, board)
    features = feature_cells(rows, run_features(settings), measures)
    if not features.empty:
        write_atomically(output_dir / "features.csv", features.to_csv(index=False))
    voices = sorted(rows["voice"].unique())
    differences = {
        f"{a} vs {b}": {
            m: float((matrices[f"voice={a}", m] - matrices[f"voice={b}", m]).abs().to_numpy().mean())
            for m in measures
            if (f"voice={a}", m) in matrices and (f"voice={b}", m) in matrices
        }
        for i, a in enumerate(voices)
        for b in voices[i + 1 :]
    }
    summary = {
        **settings,
        "primary_condition": primary,
        **(extra or {}),
        "groups": groups,
        "conditions": conditions_summary,
    }
    if not features.empty:
        summary["features"] = feature_figures(features, conditions, figures, board)
    if differences:
        summary["voice_differences_mean_abs"] = differences
        summary["voice_spread"] = voice_spread(groups, voices, measures)
    if board is not None:
        from torch.utils.tensorboard.summary import hparams

        overall = groups.get("all", {})
        metrics = {
            f"hparam/{m}_{k}": overall[m][k]
            for m in measures
            if m in overall
            for k in ("diagonal_mean", "off_diagonal_mean")
            if overall[m][k] is not None
        }
        flat = {
            k: str(v).lower()
            if isinstance(v, bool)
            else str(v)
            if isinstance(v, (list, dict, tuple)) or v is None
            else v
            for k, v in settings.items()
            if k != "hparams"
        }  # booleans as true/false, not 1.0000
        for event in hparams(flat, metrics):
            board.file_writer.add_summary(event)
        for key, value in metrics.items():
            board.add_scalar(key, value)
        fault_point("tensorboard")
        board.close()
        publish_events(staging, output_dir / "tensorboard")
    fault_point("tables")
    write_atomically(output_dir / "report.md", report_markdown(rows, summary))
    fault_point("report")
    # written last: a run with summary.json is finished (a resume is refused), so every other file is complete
    write_atomically(output_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    fault_point("finished")
    return summary


def report_markdown(rows: pd.DataFrame, summary: dict) -> str:
    """A one-page report of a run (`report.md`, images from `figures/`): settings, data card, recognition, the
    main matrices side by side on shared colour scales, sanity checks."""
    groups = summary["groups"]
    keys = (
        "model",
        "precision",
        "sites",
        "windows",
        "alphas",
        "directions",
        "min_separation",
        "max_tokens",
        "tts",
        "pairs_file",
        "limit",
        "batch_size",
        "code_version",
    )
    lines = ["# wpatch run", "", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {summary[k]} |" for k in keys if k in summary]
    categories = ", ".join(f"{c or '(none)'}: {n}" for c, n in rows.groupby("category")["pair_id"].nunique().items())
    lines += [
        "",
        "## Data",
        "",
        f"- {rows['pair_id'].nunique()} pairs, {rows['item_id'].nunique()} items "
        f"(pair x direction x voice), {len(rows)} rows",
        f"- voices: {', '.join(sorted(rows['voice'].unique()))}",
        f"- categories (pairs): {categories}",
    ]
    share = groups.get("recognised", {}).get("items", 0) / max(groups["all"]["items"], 1)
    lines += [
        "",
        "## Recognition",
        "",
        f"- clean source clip recognised as its word: "
        f"{groups.get('recognised', {}).get('items', 0)} of {groups['all']['items']} items ({share:.0%})",
    ]
    lines += [
        "",
        "## Main matrices (" + condition_title(summary["primary_condition"]) + ")",
        "",
        "All items (top) and recognised items only (bottom); colour scales fixed per measure.",
        "",
    ]
    for suffix in ("", "_recognised"):
        group = groups.get("recognised" if suffix else "all", {})
        images = [f"![{m}](figures/{m}_matrix{suffix}.png)" for m in MEASURES if m in group]
        lines.append(" ".join(images))
        lines.append("")
    lines += [
        "| measure | diagonal | off-diagonal | recognised diagonal | recognised off-diagonal |",
        "|---|---|---|---|---|",
    ]
    for m in MEASURES:
        if m in groups["all"]:
            a, r = groups["all"][m], groups.get("recognised", {}).get(m, {})
            cell = [
                number(v, 3) if v is not None else "n/a"
                for v in (
                    a["diagonal_mean"],
                    a["off_diagonal_mean"],
                    r.get("diagonal_mean"),
                    r.get("off_diagonal_mean"),
                )
            ]
            lines.append(f"| {m} | " + " | ".join(cell) + " |")
    lines += condition_section(rows, summary)
    lines += feature_section(summary)
    lines += ["", "## Sanity checks", ""]
    primary = summary["primary_condition"]
    in_primary = (rows[CONDITION] == pd.Series(primary)).all(axis=1)
    diagonal = rows[in_primary & (rows["source_layer"] == rows["target_layer"])]
    if primary["site"] == BLOCK_OUT.name and primary["window"] == "all" and primary["alpha"] == 1 and len(diagonal):
        gap = ((diagonal["logp_source"] - diagonal["logp_target"]) - diagonal["ld_source_clean"]).abs().max()
        verdict = "ok" if gap < 1e-3 else "CHECK"
        lines.append(
            f"- diagonal = clean run (whole-block patch at s = t): largest difference of the log-probability"
            f" gap from the clean source run {gap:.2g} nats ({verdict})"
        )
    lines.append(f"- recognised share: {share:.0%}")
    if summary.get("silent_clips"):
        lines.append(
            f"- clips without speech (too short or too quiet; listed in summary.json silent_clips): "
            f"{len(summary['silent_clips'])}, their items kept"
        )
    lines.append(
        f"- effect defined (clean runs separate the words by min_separation) on "
        f"{rows['effect_valid'].mean():.0%} of rows"
    )
    return "\n".join(lines) + "\n"


def condition_section(rows: pd.DataFrame, summary: dict) -> list[str]:
    """report.md's table of every condition's effect, with its figures, when a run has more than one condition
    (e.g. several sites: encoder and decoder side by side)."""
    conditions = rows[CONDITION].drop_duplicates().to_dict("records")
    if len(conditions) < 2:
        return []
    lines = [
        "",
        "## Every condition",
        "",
        "The normalised effect, mean over pairs (cells.csv has it with its 95% interval, beside every other "
        "measure). A sweep's row gives its (layer x window start) map's mean.",
        "",
        "| condition | effect diagonal (sweep: map mean) | effect off-diagonal | pairs |",
        "|---|---|---|---|",
    ]
    images = []
    for condition in conditions:
        label = condition_label(condition)
        found = summary.get("conditions", {}).get(label, {})
        sweep = condition["window"] == "sweep"
        values = [found.get("effect_mean")] if sweep else [found.get("diagonal_mean"), found.get("off_diagonal_mean")]
        cells = [number(v, 3) if v is not None else "n/a" for v in values] + (["n/a"] if sweep else [])
        lines.append(
            f"| {condition_title(condition)} | " + " | ".join(cells) + f" | {found.get('effect_pairs', 'n/a')} |"
        )
        if sweep or found.get("effect_pairs"):
            images.append(f"![{label}](figures/{figure_file(('sweep_map_' if sweep else 'effect_matrix_') + label)})")
    return [*lines, "", " ".join(images)]


def feature_section(summary: dict) -> list[str]:
    """report.md's phonetic-feature part: per feature changed by the minimal pairs, its pairs and, for the primary
    condition, the effect's diagonal / off-diagonal means, with the effect maps (features.csv has every measure)."""
    if not summary.get("features"):
        return []
    label = condition_label(summary["primary_condition"])
    lines = [
        "",
        "## Phonetic features",
        "",
        "Effect by the phonetic feature a minimal pair changes (features.csv: every measure, per position, with "
        "95% intervals over pairs).",
        "",
        "| feature | pairs | positions | effect diagonal | effect off-diagonal |",
        "|---|---|---|---|---|",
    ]
    for feature, found in summary["features"].items():
        main = found.get(label, {})
        cells = [
            number(main[k], 3) if main.get(k) is not None else "n/a" for k in ("diagonal_mean", "off_diagonal_mean")
        ]
        lines.append(f"| {feature} | {found['pairs']} | {', '.join(found['positions'])} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        " ".join(
            f"![{feature}](figures/{figure_file(f'feature_{feature}_{label}')})"
            for feature, found in summary["features"].items()
            if label in found
        )
    )
    return lines


SUMMARY_PARTS = (
    "primary_condition",
    "wall_time_s",
    "clip_cache",
    "screening",
    "silent_clips",
    "groups",
    "conditions",
    "features",
    "voice_differences_mean_abs",
    "voice_spread",
    "environment",
)  # what `analyse` adds to the settings


COMPARED = {  # what two compared runs may differ in: name -> the row columns that tell it
    "sites": ["site"],
    "windows": ["window"],
    "alphas": ["alpha"],
    "patch directions": ["patch_direction"],
    "donors": ["donor"],
    "layer pairs": ["source_layer", "target_layer"],
    "window starts": ["window_start"],
}


def shared_part(rows_a: pd.DataFrame, rows_b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The rows of two runs restricted to the cells (condition, layer pair, window start) and items both have,
    and one line per way they differ (`COMPARED`, then items and cells) with what is shared and what only one
    has. An item is a pair, direction and words (and voice, when the runs share a voice; else the runs are
    two speakers of the same items). Refused when they share no cell or no item."""
    voices = set(rows_a["voice"]) & set(rows_b["voice"])
    item = ["pair_id", "direction", "source_word", "target_word", *(["voice"] if voices else [])]
    cell = [*CONDITION, "source_layer", "target_layer", "window_start"]
    differences = []

    def keys(rows, columns):
        return pd.MultiIndex.from_frame(rows[columns]) if len(columns) > 1 else pd.Index(rows[columns[0]])

    def compared(name, columns, shown=str):
        in_a, in_b = set(keys(rows_a, columns)), set(keys(rows_b, columns))
        if in_a != in_b:
            counts = [f"{len(in_a & in_b)} shared"]
            for side, only in (("A", in_a - in_b), ("B", in_b - in_a)):
                counts.append(f"{len(only)} only in {side}")
                if only and shown:
                    listed = [shown(value) for value in sorted(only, key=str)[:4]] + (["..."] if len(only) > 4 else [])
                    counts[-1] += f" ({', '.join(listed)})"
            differences.append(f"{name}: {', '.join(counts)}; comparing the shared ones")
        return in_a & in_b

    for name, columns in COMPARED.items():
        compared(name, columns, (lambda pair: f"{pair[0]}->{pair[1]}") if name == "layer pairs" else str)
    items = compared("items", item, lambda i: f"{i[0]} {i[1]} {i[2]}->{i[3]}" + (f" {i[4]}" if voices else ""))
    cells = compared("cells", cell, None)
    for what, shared in (("item", items), ("cell (condition and layer pair)", cells)):
        if not shared:
            raise WpatchError(
                f"the two runs share no {what}, so there is nothing to compare; compare runs of the same pairs and "
                "patches"
            )
    keep_a = keys(rows_a, item).isin(list(items)) & keys(rows_a, cell).isin(list(cells))
    keep_b = keys(rows_b, item).isin(list(items)) & keys(rows_b, cell).isin(list(cells))
    return rows_a[keep_a], rows_b[keep_b], differences


def compare_runs(run_a, run_b, group: str = "all") -> pd.DataFrame:
    """Cell-by-cell differences of two runs (B - A) for one group: per condition and layer pair, each measure's
    mean in both runs and their difference, and the effect's difference with a bootstrap 95% interval over the
    pairs the two runs share (e.g. two voices, two models or two precisions on the same pairs).

    Only the cells and items both runs have are compared (`shared_part`); how the runs differ, one line each,
    is in the table's `attrs["differences"]` (`wpatch compare` prints them)."""
    rows_a, _ = load_run(run_a)
    rows_b, _ = load_run(run_b)
    rows_a, rows_b, differences = shared_part(rows_a, rows_b)
    rows_a, rows_b = (row_groups(r).get(group, r.iloc[:0]) for r in (rows_a, rows_b))
    key = [*CONDITION, "source_layer", "target_layer", "window_start"]
    measures = [m for m in MEASURES if rows_a[m].notna().any() or rows_b[m].notna().any()]
    means_a = rows_a.groupby(key)[measures].mean()
    means_b = rows_b.groupby(key)[measures].mean()
    table = means_a.join(means_b, how="inner", lsuffix="_a", rsuffix="_b")
    for measure in measures:
        table[f"{measure}_diff"] = table[f"{measure}_b"] - table[f"{measure}_a"]
    valid_a = rows_a[rows_a["effect_valid"]].groupby([*key, "pair_id"])["effect"].mean()
    valid_b = rows_b[rows_b["effect_valid"]].groupby([*key, "pair_id"])["effect"].mean()
    paired = (valid_b - valid_a).dropna()
    stats = {cell: (*bootstrap_interval(diffs.to_numpy()), len(diffs)) for cell, diffs in paired.groupby(level=key)}
    missing = (np.nan, np.nan, 0)
    table["effect_diff_low"] = [stats.get(cell, missing)[0] for cell in table.index]
    table["effect_diff_high"] = [stats.get(cell, missing)[1] for cell in table.index]
    table["shared_pairs"] = [stats.get(cell, missing)[2] for cell in table.index]
    table = table.reset_index()
    table.attrs["differences"] = differences
    return table


def console_table(rows: pd.DataFrame, summary: dict, measure: str = "score") -> str:
    """What a run found, for the console: the primary condition's `measure` matrix (all items), then per
    measure its diagonal and off-diagonal means over all items and over the recognised ones only."""
    in_primary = (rows[CONDITION] == pd.Series(summary["primary_condition"])).all(axis=1)
    matrix = layer_matrix(rows[in_primary], measure)
    matrix.index.name, matrix.columns.name = "source \\ target", None
    shown = matrix.map(lambda x: "" if pd.isna(x) else f"{x + 0.0:.2f}".replace("-0.00", "0.00"))
    groups = summary["groups"]
    lines = [
        f"{measure} by source layer (rows) and target layer (columns), {groups['all']['items']} items:",
        shown.to_string(),
        "",
        f"{'measure':<18} {'diagonal':>9} {'off-diag':>9} {'recognised diag':>16} {'recognised off':>15}",
    ]

    def number(value) -> str:
        return "n/a" if value is None else f"{value + 0.0:.3f}"

    for name in MEASURES:
        if name not in groups["all"]:
            continue
        everything, known = groups["all"][name], groups.get("recognised", {}).get(name, {})
        lines.append(
            f"{name:<18} {number(everything['diagonal_mean']):>9} "
            f"{number(everything['off_diagonal_mean']):>9} "
            f"{number(known.get('diagonal_mean')):>16} {number(known.get('off_diagonal_mean')):>15}"
        )
    share = groups.get("recognised", {}).get("items", 0) / max(groups["all"]["items"], 1)
    lines.append(f"recognised share (clean source clip heard as its word): {share:.2f}")
    return "\n".join(lines)


def not_a_run(folder: Path) -> str:
    """Why `folder` holds no run to read back (it has no predictions.csv), and the way out."""
    if not folder.exists():
        return f"run folder {folder} does not exist; give the --writer.output_dir of a finished run"
    if not folder.is_dir():
        return f"{folder} is a file, not a run folder; give the --writer.output_dir of a finished run"
    if (folder / "run.json").exists() or (folder / "parts").is_dir():
        config = folder / "config.yaml"
        how = f"wpatch predict --config {config} --writer.resume true" if config.exists() else "--writer.resume true"
        return f"run folder {folder} holds an unfinished run (no predictions.csv yet); finish it with {how}"
    return f"{folder} is not a wpatch run (no predictions.csv); give the --writer.output_dir of a finished run"


def load_run(folder) -> tuple[pd.DataFrame, dict]:
    """A run read back: its predictions.csv as a DataFrame (transcripts and words stay strings, "" included)
    and its summary.json as a dict (empty when the run has not been summarised yet). A folder without
    predictions.csv is refused (`WpatchError`), saying what it is."""
    folder = Path(folder)
    if not (folder / "predictions.csv").is_file():
        raise WpatchError(not_a_run(folder))
    rows = read_rows(folder / "predictions.csv")
    summary_path = folder / "summary.json"
    return rows, json.loads(summary_path.read_text()) if summary_path.exists() else {}
