"""Two runs compared cell by cell (`wpatch compare`): only what both have, and how they differ, said."""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from wpatch.analysis.stats import bootstrap_interval
from wpatch.analysis.tables import read_rows_and_summary, row_groups
from wpatch.errors import WpatchError
from wpatch.rows import CONDITION, MEASURES, with_sweep_start
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
    mean in both runs and their difference, and the effect's difference with a bootstrap 95% interval over the
    pairs the two runs share (e.g. two voices, two models or two precisions on the same pairs).

    Only the cells and items both runs have are compared (`shared_part`); how the runs differ, one line each,
    is in the table's `attrs["differences"]` (`wpatch compare` prints them)."""
    rows_a, _ = read_rows_and_summary(run_a)
    rows_b, _ = read_rows_and_summary(run_b)
    rows_a, rows_b, differences = shared_part(rows_a, rows_b)
    rows_a, rows_b = (row_groups(r).get(group, r.iloc[:0]) for r in (rows_a, rows_b))
    key = [*CONDITION, "source_layer", "target_layer", "sweep_start"]
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


def compare_header(run_a, run_b, group: str = "all") -> str:
    """What `wpatch compare RUN_A RUN_B` says before its table: the two runs, the settings they differ in, the
    group, that values are B - A, and what a cell and its columns are."""
    differences = settings_differences(run_a, run_b)
    return "\n".join(
        [
            f"compare: run B - run A, cell by cell, group {group} (every item both runs have)",
            f"  A: {Path(run_a).resolve()}",
            f"  B: {Path(run_b).resolve()}",
            f"  settings that differ: {'; '.join(differences) if differences else 'none'}",
            f"  a cell: condition ({', '.join(CONDITION)}), source_layer, target_layer, sweep_start",
            "  sweep_start = -1: not a sweep window (the whole window named in `window`); else the sweep window's "
            "first frame",
            "  <measure>_a, <measure>_b: the cell's mean in each run; <measure>_diff = B - A;",
            "  effect_diff_low, effect_diff_high: the 95% interval of effect_diff over the shared pairs",
            "",
        ]
    )
