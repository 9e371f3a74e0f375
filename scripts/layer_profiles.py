"""The layer-pair figures of Experiment A runs, from their predictions.csv: per group of rows (all, the items whose
clean source clip is heard, same and different speakers, each voice), the diagonal and off-diagonal means of score,
effect and override, the off-diagonal profile by source and by target layer, and the asymmetry (later source layers
into earlier target layers, s > t, against s < t), each with a bootstrap 95% interval over pairs.

    python scripts/layer_profiles.py RUN [RUN ...]        # one Markdown section per run
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from wpatch.analysis.stats import bootstrap_interval, pooled_interval
from wpatch.analysis.tables import read_rows, row_groups

MEASURES = ("score", "effect", "override")


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


def section(folder: Path) -> list[str]:
    rows = read_rows(folder / "predictions.csv")
    rows["override"] = rows["override"].astype(float)
    items = rows.drop_duplicates("item_id")
    lines = [f"### {folder.name}", "", f"{len(items)} items, {rows.pair_id.nunique()} pairs, {len(rows)} rows; "]
    lines[-1] += f"clean source clip heard: {items.source_recognised.mean():.3f} of items"
    head = "| group | items | " + " | ".join(f"{m} diagonal | {m} off-diagonal" for m in MEASURES)
    lines += ["", head + " | score s>t minus s<t |", "|---" * (3 + 2 * len(MEASURES)) + "|"]
    for name, group in row_groups(rows).items():
        if name.startswith("category=") or group.empty:
            continue
        diagonal = group[group.source_layer == group.target_layer]
        off = group[group.source_layer != group.target_layer]
        cells = " | ".join(f"{interval(diagonal, m)} | {interval(off, m)}" for m in MEASURES)
        lines.append(f"| {name} | {group.item_id.nunique()} | {cells} | {asymmetry(group, 'score')} |")
    off = rows[rows.source_layer != rows.target_layer]
    lines += ["", "Off-diagonal score by layer (all items):", "", "| layer | as source | as target |", "|---|---|---|"]
    for layer in sorted(set(rows.source_layer)):
        lines.append(
            f"| {layer} | {interval(off[off.source_layer == layer], 'score')} | "
            f"{interval(off[off.target_layer == layer], 'score')} |"
        )
    matrix = rows.pivot_table(index="source_layer", columns="target_layer", values="score", aggfunc="mean")
    lines += ["", "Score matrix (rows: source layer s, columns: target layer t):", ""]
    lines += ["| s \\ t | " + " | ".join(map(str, matrix.columns)) + " |", "|---" * (len(matrix.columns) + 1) + "|"]
    for s, values in matrix.iterrows():
        lines.append(
            f"| {s} | " + " | ".join(f"**{v:.2f}**" if s == t else f"{v:.2f}" for t, v in values.items()) + " |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with predictions.csv)")
    for folder in parser.parse_args().runs:
        print("\n".join(section(folder)))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
