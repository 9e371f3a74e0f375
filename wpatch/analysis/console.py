"""What a run found, for the console: the primary condition's matrix and the diagonal / off-diagonal means, and
where its page and files are (printed when a run finishes and by `wpatch report`)."""

from pathlib import Path

import pandas as pd

from wpatch.analysis.tables import layer_matrix
from wpatch.rows import CONDITION, MEASURES


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


def closing_lines(rows: pd.DataFrame, summary: dict, folder: Path, wall_time_s: float | None = None) -> str:
    """What a finished run says: `console_table`, its page (report.html), the wall time (when given) and its
    folder, last."""
    folder = Path(folder).resolve()
    took = f"wall time {wall_time_s:.1f} s; " if wall_time_s is not None else ""
    lines = [
        console_table(rows, summary),
        f"page: {folder / 'report.html'}",
        f"{took}tables, figures and report.md in:",
    ]
    return "\n".join([*lines, str(folder)])
