"""Two runs compared cell by cell (`wpatch compare`): only what both have, and how they differ, said."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from wpatch.analysis.figures import SWEEP_AXES, condition_title, heatmap, number
from wpatch.analysis.stats import bootstrap_interval
from wpatch.analysis.tables import cell_matrix, condition_label, primary_condition, read_rows_and_summary, row_groups
from wpatch.errors import WpatchError
from wpatch.rows import CONDITION, MEASURE_NAMES, MEASURES, SCALES, with_sweep_start
from wpatch.run_summary import RunSummary

COMPARED = {  # what two compared runs may differ in: name -> the row columns that tell it
    "sites": ["site"],
    "windows": ["window"],
    "alphas": ["alpha"],
    "patch directions": ["patch_direction"],
    "donors": ["donor"],
    "layer pairs": ["source_layer", "target_layer"],
    "sweep window starts": ["sweep_start"],
}

INTERVALS = {  # the measures whose B - A gets a 95% interval over pairs: its columns (low, high, pairs)
    "effect": ("effect_diff_low", "effect_diff_high", "shared_pairs"),
    "score": ("score_diff_low", "score_diff_high", "score_pairs"),
}


def shared_part(rows_a: pd.DataFrame, rows_b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The rows of two runs restricted to the cells (condition, layer pair, window start) and items both have,
    and one line per way they differ (`COMPARED`, then items and cells) with what is shared and what only one
    has. An item is a pair, direction and words (and voice, when the runs share a voice; else the runs are
    two speakers of the same items). A cell's window start is the sweep's (`with_sweep_start`): a `word` window
    starts where each clip's word does, which differs between, e.g., a word alone and in a sentence. Refused when
    they share no cell or no item."""
    rows_a, rows_b = with_sweep_start(rows_a), with_sweep_start(rows_b)
    voices = set(rows_a["voice"]) & set(rows_b["voice"])
    item = ["pair_id", "direction", "source_word", "target_word", *(["voice"] if voices else [])]
    cell = [*CONDITION, "source_layer", "target_layer", "sweep_start"]
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
    mean in both runs and their difference, and the effect's and the score's difference with a bootstrap 95%
    interval over the pairs the two runs share (`INTERVALS`), e.g. two voices, models or precisions on the same
    pairs.

    Only the cells and items both runs have are compared (`shared_part`); how the runs differ, one line each,
    is in the table's `attrs["differences"]` (`wpatch compare` prints them), and run A's primary condition (that
    of its layer matrices) in `attrs["primary"]`."""
    rows_a, _ = read_rows_and_summary(run_a)
    rows_b, _ = read_rows_and_summary(run_b)
    rows_a, rows_b, differences = shared_part(rows_a, rows_b)
    primary = primary_condition(rows_a)
    rows_a, rows_b = (row_groups(r).get(group, r.iloc[:0]) for r in (rows_a, rows_b))
    key = [*CONDITION, "source_layer", "target_layer", "sweep_start"]
    measures = [m for m in MEASURES if rows_a[m].notna().any() or rows_b[m].notna().any()]
    means_a = rows_a.groupby(key)[measures].mean()
    means_b = rows_b.groupby(key)[measures].mean()
    table = means_a.join(means_b, how="inner", lsuffix="_a", rsuffix="_b")
    for measure in measures:
        table[f"{measure}_diff"] = table[f"{measure}_b"] - table[f"{measure}_a"]
    for measure, names in INTERVALS.items():
        a, b = (r[r["effect_valid"]] if measure == "effect" else r for r in (rows_a, rows_b))
        paired = (b.groupby([*key, "pair_id"])[measure].mean() - a.groupby([*key, "pair_id"])[measure].mean()).dropna()
        stats = {cell: (*bootstrap_interval(d.to_numpy()), len(d)) for cell, d in paired.groupby(level=key)}
        if measure == "effect" or measure in measures:
            for i, name in enumerate(names):
                table[name] = [stats.get(cell, (np.nan, np.nan, 0))[i] for cell in table.index]
    table = table.reset_index()
    table.attrs["differences"] = differences
    table.attrs["primary"] = primary
    return table


def cell_names(table: pd.DataFrame) -> list[str]:
    """Each cell of a `compare_runs` table in short: `source->target`, `@start` for a sweep window, and the
    condition's label first when the table holds several conditions."""
    several = len(table[CONDITION].drop_duplicates()) > 1
    return [
        (f"{condition_label(dict(zip(CONDITION, c)))} " if several else "")
        + f"{s}->{t}"
        + (f" @{start}" if start >= 0 else "")
        for *c, s, t, start in table[[*CONDITION, "source_layer", "target_layer", "sweep_start"]].itertuples(
            index=False
        )
    ]


def shown_measure(table: pd.DataFrame) -> str:
    """The measure `wpatch compare` shows: the effect, or the score when neither run has an effect value."""
    return "effect" if "effect_diff" in table else "score"


def narrow_table(table: pd.DataFrame, measure: str = "effect") -> pd.DataFrame:
    """What `wpatch compare` prints of a `compare_runs` table: one row per cell with its name, `measure`'s mean in
    run A and in run B, B-A, and (for the effect and score) B-A's 95% interval over the shared pairs (low, high,
    pairs)."""
    narrow = pd.DataFrame(
        {
            "cell": cell_names(table),
            "A": table[f"{measure}_a"],
            "B": table[f"{measure}_b"],
            "B-A": table[f"{measure}_diff"],
        }
    )
    if measure in INTERVALS:
        narrow["low"], narrow["high"], narrow["pairs"] = (table[name] for name in INTERVALS[measure])
    return narrow


def narrow_text(narrow: pd.DataFrame) -> str:
    """A narrow table as console text: the interval as `[low, high]` (`-` with fewer than two shared pairs)."""
    shown = narrow[["cell", "A", "B", "B-A"]].map(lambda x: x if isinstance(x, str) else number(x, 3))
    if "low" in narrow:
        shown["interval"] = [
            "-" if np.isnan(low) else f"[{number(low, 3)}, {number(high, 3)}]"
            for low, high in zip(narrow["low"], narrow["high"])
        ]
        shown["pairs"] = narrow["pairs"]
    return shown.to_string(index=False)


def difference_matrix(table: pd.DataFrame, measure: str = "effect") -> pd.DataFrame:
    """B-A of `measure` per layer cell of the primary condition (`attrs["primary"]`): source x target layer, or
    layer x window start for a sweep."""
    primary = table.attrs.get("primary") or primary_condition(table)
    mine = table[(table[CONDITION] == pd.Series(primary)).all(axis=1)]
    if primary["window"] == "sweep":
        return cell_matrix(mine, f"{measure}_diff", "target_layer", "sweep_start")
    return cell_matrix(mine, f"{measure}_diff")


def difference_figure(table: pd.DataFrame, group: str = "all", measure: str = "effect") -> Figure:
    """The heatmap of `difference_matrix`, on a fixed diverging scale as wide as the measure's range either way
    (-2..2 for the effect, -1..1 for rates): blue where run B is lower, red where it is higher; each cell's B-A
    written to 3 decimals."""
    primary = table.attrs.get("primary") or primary_condition(table)
    low, high = SCALES.get(measure, (0.0, 1.0))
    name = MEASURE_NAMES.get(measure, measure)
    matrix = difference_matrix(table, measure)
    return heatmap(
        matrix,
        f"{name}: run B - run A, group {group}\n{condition_title(primary)}",
        measure=measure,
        scale=(low - high, high - low),
        labels=matrix.map(lambda x: "" if pd.isna(x) else number(x, 3)) if matrix.shape[1] <= 16 else None,
        colour_label=f"B - A, {name}",
        **({"axis_names": SWEEP_AXES} if primary["window"] == "sweep" else {}),
    )


def settings_differences(run_a, run_b) -> list[str]:
    """The settings (summary.json's) in which two runs differ, each as `name (A value, B value)`; a run without
    summary.json (a table analysed on its own) is said to have none recorded."""
    settings = []
    for side, run in (("A", run_a), ("B", run_b)):
        path = Path(run) / "summary.json"
        if not path.is_file():
            return [f"not known: run {side} recorded no settings (no summary.json)"]
        settings.append({k: v for k, v in RunSummary.read(path).settings.items() if k != "hparams"})
    a, b = settings

    def shown(value) -> str:
        text = json.dumps(value)
        return text if len(text) <= 40 else text[:37] + "..."

    return [f"{key} (A {shown(a.get(key))}, B {shown(b.get(key))})" for key in a | b if a.get(key) != b.get(key)]


def compare_header(run_a, run_b, table: pd.DataFrame, measure: str = "effect", group: str = "all") -> str:
    """What `wpatch compare RUN_A RUN_B` says before its table (`narrow_text`): the two runs, the settings they
    differ in, the group, that values are B - A, and what a cell and each column is."""
    differences = settings_differences(run_a, run_b)
    conditions = table[CONDITION].drop_duplicates().to_dict("records")
    cell = "source layer->target layer (@first frame of a sweep window)"
    if len(conditions) == 1:
        cell += f", condition {condition_title(conditions[0])}"
    else:
        cell = f"condition ({', '.join(CONDITION)}) {cell}"
    return "\n".join(
        [
            f"compare: run B - run A, cell by cell, group {group} (every item both runs have)",
            f"  A: {Path(run_a).resolve()}",
            f"  B: {Path(run_b).resolve()}",
            f"  settings that differ: {'; '.join(differences) if differences else 'none'}",
            f"  a cell: {cell}",
            f"  A, B: the cell's mean {MEASURE_NAMES[measure]} in each run; B-A: B minus A"
            + ("" if measure == "effect" else " (the runs have no effect values)"),
            "  interval: the 95% bootstrap interval of B-A over the pairs both runs have (pairs: how many)",
            "",
        ]
    )
