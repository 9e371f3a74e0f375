"""The analysis of a run, from its rows alone: groups, layer matrices, bootstrap intervals, summary and figures.

Everything here works on a `predictions.csv` (or the DataFrame read from one), with no Trainer: the writer
calls `write_report` when a run ends, and `wpatch report RUN_DIR` (or `write_report(read_rows(...), dir)`)
re-runs it on a saved run. `load_run(dir)` reads a run back: its rows and its summary.

A condition is one setting of (site, window, alpha, patch_direction, donor). The layer matrices and their
heatmaps per group are for the primary condition (the first one that is not a sweep); every condition gets
an effect heatmap with 95% intervals, and sliding-window sweeps a (layer x time) map.
"""

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from wpatch.atomic import write_atomically

MEASURES = ("override", "transfer", "score", "effect", "p_source_language")  # the last only where languages differ
CONDITION = ["site", "window", "alpha", "patch_direction", "donor"]
ROW_KEY = ["item_id", *CONDITION, "source_layer", "target_layer", "window_start"]
BOOTSTRAP_SAMPLES = 1000


def condition_label(condition: dict) -> str:
    """A condition as a short name: block_out_all_a1_denoising_source."""
    c = condition
    return f"{c['site']}_{c['window']}_a{c['alpha']:g}_{c['patch_direction']}_{c['donor']}"


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


TEXT_COLUMNS = ["pair_id", "direction", "category", "voice", "source_word", "target_word", "site", "window",
                "patch_direction", "donor", "donor_word", "transcript"]


def read_rows(path) -> pd.DataFrame:
    """A rows CSV as written: text columns stay strings (even "", "NaN" or "1"), p_source_language and effect
    may be empty (NaN)."""
    return pd.read_csv(path, keep_default_na=False, na_values={"p_source_language": [""], "effect": [""]},
                       dtype={column: str for column in TEXT_COLUMNS})


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
        return None if not len(cells) else {"source_layer": int(index[0]), "target_layer": int(index[1]),
                                           "value": float(cells[index])}

    return {
        "diagonal_mean": float(diagonal.mean()) if len(diagonal) else None,
        "off_diagonal_mean": float(off.mean()) if len(off) else None,
        "best_cell": cell(cells.idxmax() if len(cells) else None),
        "worst_cell": cell(cells.idxmin() if len(cells) else None),
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
                vmin=low, vmax=high, cmap="viridis", square=labels is None and width <= 16, ax=axes,
                cbar_kws={"shrink": 0.8})
    axes.set_xlabel(axis_names[0])
    axes.set_ylabel(axis_names[1])
    axes.set_title(title)
    figure.tight_layout()
    return figure




def primary_condition(rows: pd.DataFrame) -> dict:
    """The condition the layer matrices are for: the first one asked for that is not a sweep."""
    conditions = rows[CONDITION].drop_duplicates().to_dict("records")
    return next((c for c in conditions if c["window"] != "sweep"), conditions[0])


def cell_matrix(cells: pd.DataFrame, value: str, index="source_layer", columns="target_layer") -> pd.DataFrame:
    """One column of a cells table as a matrix, every cell kept (NaN where a value is missing)."""
    matrix = cells.groupby([index, columns])[value].mean().unstack(columns)
    return matrix.astype(float)


def condition_figures(cells: pd.DataFrame, conditions: list[dict], output_dir: Path, tensorboard=None) -> dict:
    """For each condition: the effect heatmap with 95% intervals (or, for a sweep, the layer x time map),
    saved as PNG (and to TensorBoard when given); returns the effect's diagonal / off-diagonal means per
    condition. A cell with fewer than two pairs has no interval ("n/a")."""
    summary = {}
    for condition in conditions:
        label = condition_label(condition)
        mine = cells[(cells[CONDITION] == pd.Series(condition)).all(axis=1)]
        if condition["window"] == "sweep":
            matrix = cell_matrix(mine, "effect", "target_layer", "sweep_start")
            figure = heatmap(matrix, f"effect by layer and window start\n{label}",
                             axis_names=("window start (frame)", "layer (s = t)"))
            name, tag = f"sweep_map_{label}", f"sweep_map/{label}"
            effect = matrix.to_numpy()
            summary[label] = {"effect_mean": float(np.nanmean(effect)) if np.isfinite(effect).any() else None}
        else:
            matrix = cell_matrix(mine, "effect")
            if matrix.empty or not matrix.notna().any().any():
                summary[label] = {"effect_pairs": 0}
                continue
            low, high = cell_matrix(mine, "effect_low"), cell_matrix(mine, "effect_high")

            def label_of(value, lo, hi):
                interval = f"[{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) and np.isfinite(hi) else "[n/a]"
                return f"{value:.2f}\n{interval}" if np.isfinite(value) else ""

            labels = pd.DataFrame([[label_of(matrix.iat[i, j], low.iat[i, j], high.iat[i, j])
                                    for j in range(matrix.shape[1])] for i in range(matrix.shape[0])],
                                  index=matrix.index, columns=matrix.columns)
            figure = heatmap(matrix, f"effect, 95% CI over pairs\n{label}", labels=labels)
            name, tag = f"effect_matrix_{label}", f"effect_matrix/{label}"
            summary[label] = {**matrix_summary(matrix), "effect_pairs": int(mine["effect_pairs"].max())}
        figure.savefig(output_dir / (re.sub(r"[^\w.-]", "_", name) + ".png"), dpi=110)
        if tensorboard is not None:
            tensorboard.add_figure(tag, figure)
    return summary


def analyse(rows: pd.DataFrame, output_dir, settings: dict | None = None, extra: dict | None = None,
            tensorboard: bool = True) -> dict:
    """Write cells.csv, the layer matrices (CSV and PNG) per group, the effect figures, the TensorBoard event
    file (`tensorboard=True`) and summary.json for these rows into `output_dir`; returns the summary.

    `settings` (the run's settings) lead the summary, `extra` (e.g. wall time, clip cache) follows them."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = dict(settings or {})
    measures = [m for m in MEASURES if rows[m].notna().any()]
    cells = cell_table(row_groups(rows))
    cells.to_csv(output_dir / "cells.csv", index=False)
    conditions = rows[CONDITION].drop_duplicates().to_dict("records")
    primary = primary_condition(rows)
    in_primary = (rows[CONDITION] == pd.Series(primary)).all(axis=1)
    board = None
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        board = SummaryWriter(output_dir / "tensorboard")
    groups, matrices = {}, {}
    for group, frame in row_groups(rows[in_primary]).items():
        groups[group] = {"items": int(frame["item_id"].nunique()), "rows": len(frame)}
        if frame.empty:
            continue
        for measure in measures:
            matrix = matrices[group, measure] = layer_matrix(frame, measure)
            if matrix.empty or not matrix.notna().any().any():
                continue
            name = f"{measure}_matrix{file_suffix(group)}"
            matrix.to_csv(output_dir / f"{name}.csv")
            groups[group][measure] = matrix_summary(matrix)
            figure = heatmap(matrix, f"{measure} ({group}, {groups[group]['items']} items)")
            figure.savefig(output_dir / f"{name}.png", dpi=110)
            if board is not None:
                board.add_figure(f"{measure}_matrix/{group}", figure)
                for key in ("diagonal_mean", "off_diagonal_mean"):
                    if groups[group][measure][key] is not None:
                        board.add_scalar(f"{measure}/{key}/{group}", groups[group][measure][key])
    conditions_summary = condition_figures(cells[cells["group"] == "all"], conditions, output_dir, board)
    voices = sorted(rows["voice"].unique())
    differences = {
        f"{a} vs {b}": {m: float((matrices[f"voice={a}", m] - matrices[f"voice={b}", m]).abs().to_numpy().mean())
                        for m in measures if (f"voice={a}", m) in matrices and (f"voice={b}", m) in matrices}
        for i, a in enumerate(voices) for b in voices[i + 1:]
    }
    summary = {**settings, "primary_condition": primary, **(extra or {}), "groups": groups,
               "conditions": conditions_summary}
    if differences:
        summary["voice_differences_mean_abs"] = differences
        summary["voice_spread"] = voice_spread(groups, voices, measures)
    if board is not None:
        from torch.utils.tensorboard.summary import hparams

        overall = groups.get("all", {})
        metrics = {f"hparam/{m}_{k}": overall[m][k] for m in measures if m in overall
                   for k in ("diagonal_mean", "off_diagonal_mean") if overall[m][k] is not None}
        flat = {k: str(v) if isinstance(v, (list, dict, tuple)) or v is None else v for k, v in settings.items()}
        for event in hparams(flat, metrics):
            board.file_writer.add_summary(event)
        for key, value in metrics.items():
            board.add_scalar(key, value)
        board.close()
    write_atomically(output_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary


SUMMARY_PARTS = ("primary_condition", "wall_time_s", "clip_cache", "screening", "groups", "conditions",
                 "voice_differences_mean_abs", "voice_spread", "environment")  # what `analyse` adds to the settings


def compare_runs(run_a, run_b, group: str = "all") -> pd.DataFrame:
    """Cell-by-cell differences of two runs (B - A) for one group: per condition and layer pair, each measure's
    mean in both runs and their difference, and the effect's difference with a bootstrap 95% interval over the
    pairs the two runs share (e.g. two voices, two models or two precisions on the same pairs)."""
    rows_a, _ = load_run(run_a)
    rows_b, _ = load_run(run_b)
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
    return table.reset_index()


def console_table(rows: pd.DataFrame, summary: dict, measure: str = "score") -> str:
    """What a run found, for the console: the primary condition's `measure` matrix (all items), then per
    measure its diagonal and off-diagonal means over all items and over the recognised ones only."""
    in_primary = (rows[CONDITION] == pd.Series(summary["primary_condition"])).all(axis=1)
    matrix = layer_matrix(rows[in_primary], measure)
    matrix.index.name, matrix.columns.name = "source \\ target", None
    shown = matrix.map(lambda x: "" if pd.isna(x) else f"{x + 0.0:.2f}".replace("-0.00", "0.00"))
    groups = summary["groups"]
    lines = [f"{measure} by source layer (rows) and target layer (columns), {groups['all']['items']} items:",
             shown.to_string(), "", f"{'measure':<18} {'diagonal':>9} {'off-diag':>9} {'recognised diag':>16} "
             f"{'recognised off':>15}"]

    def number(value) -> str:
        return "n/a" if value is None else f"{value + 0.0:.3f}"

    for name in MEASURES:
        if name not in groups["all"]:
            continue
        everything, known = groups["all"][name], groups.get("recognised", {}).get(name, {})
        lines.append(f"{name:<18} {number(everything['diagonal_mean']):>9} {number(everything['off_diagonal_mean']):>9} "
                     f"{number(known.get('diagonal_mean')):>16} {number(known.get('off_diagonal_mean')):>15}")
    share = groups.get("recognised", {}).get("items", 0) / max(groups["all"]["items"], 1)
    lines.append(f"recognised share (clean source clip heard as its word): {share:.2f}")
    return "\n".join(lines)


def load_run(folder) -> tuple[pd.DataFrame, dict]:
    """A run read back: its predictions.csv as a DataFrame (transcripts and words stay strings, "" included)
    and its summary.json as a dict (empty when the run has not been summarised yet)."""
    folder = Path(folder)
    rows = read_rows(folder / "predictions.csv")
    summary_path = folder / "summary.json"
    return rows, json.loads(summary_path.read_text()) if summary_path.exists() else {}
