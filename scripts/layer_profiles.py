"""The layer-pair figures of Experiment A runs, from their predictions.csv: per group of rows (all, the items whose
clean source clip is heard, same and different speakers, each voice), the diagonal and off-diagonal means of score,
effect and override, the off-diagonal profile by source and by target layer, and the asymmetry (later source layers
into earlier target layers, s > t, against s < t), each with a bootstrap 95% interval over pairs.

    python -m scripts.layer_profiles RUN [RUN ...]        # one Markdown section per run
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from wpatch.analysis.stats import bootstrap_interval, pooled_interval
from wpatch.analysis.tables import read_rows, row_groups

MEASURES = ("score", "effect", "override")  # the default; Experiment B: --measures transfer score --all-cells


def interval(rows: pd.DataFrame, measure: str) -> str:
    """`mean [low, high]` over pairs (`wpatch.analysis.stats.pooled_interval`)."""
    mean, low, high, _ = pooled_interval(rows, measure)
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def asymmetry(rows: pd.DataFrame, measure: str) -> str:
    """Mean over pairs of (the pair's mean over cells s > t) - (its mean over cells s < t), with its interval."""
    later = rows[rows.source_layer > rows.target_layer].groupby("pair_id")[measure].mean()
    earlier = rows[rows.source_layer < rows.target_layer].groupby("pair_id")[measure].mean()
    difference = (later - earlier).dropna().to_numpy(float)
    low, high = bootstrap_interval(difference)
    return f"{difference.mean():+.3f} [{low:+.3f}, {high:+.3f}]"


def cell_sets(rows: pd.DataFrame, all_cells: bool = False) -> list[pd.DataFrame]:
    """The rows of the diagonal (s = t) and off it, after all of them where `all_cells`."""
    diagonal = rows.source_layer == rows.target_layer
    return ([rows] if all_cells else []) + [rows[diagonal], rows[~diagonal]]


def section(folder: Path, measures: tuple[str, ...] = MEASURES, all_cells: bool = False) -> list[str]:
    """One run's tables; the first measure gives the by-layer profile and the matrix."""
    rows = read_rows(folder / "predictions.csv")
    for measure in ("override", "retained", "transfer"):
        rows[measure] = rows[measure].astype(float)
    first = measures[0]
    items = rows.drop_duplicates("item_id")
    lines = [f"### {folder.name}", "", f"{len(items)} items, {rows.pair_id.nunique()} pairs, {len(rows)} rows; "]
    lines[-1] += f"clean source clip heard: {items.source_recognised.mean():.3f} of items"
    parts = (["all cells"] if all_cells else []) + ["diagonal", "off-diagonal"]
    head = "| group | items | " + " | ".join(f"{m} {part}" for m in measures for part in parts)
    asymmetric = [first, *(["effect"] if "effect" in measures[1:] else [])]
    head += "".join(f" | {m} s>t minus s<t" for m in asymmetric) + " |"
    lines += ["", head, "|---" * (2 + len(parts) * len(measures) + len(asymmetric)) + "|"]
    for name, group in row_groups(rows).items():
        if (name.startswith("category=") and "|" in name) or group.empty:
            continue
        cells = " | ".join(interval(subset, m) for m in measures for subset in cell_sets(group, all_cells))
        shifts = "".join(f" | {asymmetry(group, m)}" for m in asymmetric)
        lines.append(f"| {name} | {group.item_id.nunique()} | {cells}{shifts} |")
    off = rows[rows.source_layer != rows.target_layer]
    lines += [
        "",
        f"Off-diagonal {first} by layer (all items):",
        "",
        "| layer | as source | as target |",
        "|---|---|---|",
    ]
    for layer in sorted(set(rows.source_layer)):
        lines.append(
            f"| {layer} | {interval(off[off.source_layer == layer], first)} | "
            f"{interval(off[off.target_layer == layer], first)} |"
        )
    matrix = rows.pivot_table(index="source_layer", columns="target_layer", values=first, aggfunc="mean")
    lines += ["", f"{first} matrix (rows: source layer s, columns: target layer t):", ""]
    lines += ["| s \\ t | " + " | ".join(map(str, matrix.columns)) + " |", "|---" * (len(matrix.columns) + 1) + "|"]
    for s, values in matrix.iterrows():
        lines.append(
            f"| {s} | " + " | ".join(f"**{v:.2f}**" if s == t else f"{v:.2f}" for t, v in values.items()) + " |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with predictions.csv)")
    parser.add_argument("--measures", nargs="+", default=list(MEASURES), help="columns of predictions.csv")
    parser.add_argument("--all-cells", action="store_true", help="also each measure's mean over every cell")
    options = parser.parse_args()
    for folder in options.runs:
        print("\n".join(section(folder, tuple(options.measures), options.all_cells)))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
