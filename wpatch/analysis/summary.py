"""A run's analysis, written: cells.csv, matrices.csv, features.csv, the figures, the TensorBoard file, report.md,
report.html and, last, summary.json (the mark of a finished run). The writer calls `analyse` when a run ends, and
`wpatch report RUN_DIR` calls it again on a saved run's rows.
"""

from pathlib import Path

import pandas as pd

from wpatch.analysis.attribution import atp_validation, map_figures
from wpatch.analysis.features import feature_cells, run_features
from wpatch.analysis.figures import condition_figures, feature_figures, file_suffix, group_title, heatmap, save_figure
from wpatch.analysis.html import write_report_html
from wpatch.analysis.lens import lens_figure, lens_rows, lens_table
from wpatch.analysis.report import report_markdown
from wpatch.analysis.tables import (
    cell_table,
    layer_matrix,
    long_matrices,
    matrix_summary,
    primary_condition,
    row_groups,
    voice_spread,
)
from wpatch.analysis.tensorboard import RunBoard
from wpatch.atomic import write_atomically
from wpatch.faults import fault_point
from wpatch.rows import CONDITION, MEASURE_NAMES, MEASURES
from wpatch.run_summary import Findings, Recorded, RunSummary


def analyse(
    rows: pd.DataFrame,
    output_dir,
    settings: dict | None = None,
    recorded: Recorded | None = None,
    tensorboard: bool = True,
    edited: str | None = None,
) -> dict:
    """Write cells.csv, the layer matrices (CSV and PNG) per group, the effect figures, the TensorBoard event
    file (`tensorboard=True`), report.md, report.html and, last, summary.json for these rows into `output_dir`;
    returns the summary (summary.json's content). Every file is written atomically; summary.json, last, marks the
    run finished.

    The summary is a `wpatch.run_summary.RunSummary`: the run's `settings`, what the run `recorded` (wall time,
    clip cache, ...), what this analysis found, and `edited` (what differs from the table the run wrote)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = dict(settings or {})
    measures = [m for m in MEASURES if rows[m].notna().any()]
    cells = cell_table(row_groups(rows))
    write_atomically(output_dir / "cells.csv", cells.to_csv(index=False))
    conditions = rows[CONDITION].drop_duplicates().to_dict("records")
    primary = primary_condition(rows)
    in_primary = (rows[CONDITION] == pd.Series(primary)).all(axis=1)
    board = RunBoard(output_dir) if tensorboard else None
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
    changed = run_features(output_dir, settings)
    features = feature_cells(rows, changed, measures)
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
    found = Findings(primary, groups, conditions_summary)
    if not features.empty:
        found.features = feature_figures(features, conditions, figures, board)
    lens = lens_table(lens_rows(rows, settings), changed)
    write_atomically(output_dir / "lens.csv", lens.to_csv(index=False))
    if not lens.empty:
        save_figure(lens_figure(lens), figures / "encoder_lens.png")
    found.encoder_lens = {
        group: {
            str(r.block): {"items": int(r.items), "recognised": float(r.recognised), "logp_word": float(r.logp_word)}
            for r in frame.itertuples()
        }
        for group, frame in lens.groupby("group", sort=False)
    }
    found.atp_validation = atp_validation(output_dir)
    map_figures(output_dir)
    if differences:
        found.voice_differences_mean_abs = differences
        found.voice_spread = voice_spread(groups, voices, measures)
    if board is not None:
        board.close(settings, groups, measures)
    summary = RunSummary(settings, recorded or Recorded(), found, edited)
    fault_point("tables")
    write_atomically(output_dir / "report.md", report_markdown(rows, summary.as_dict()))
    fault_point("report")
    write_report_html(output_dir, rows, summary.as_dict())  # reads report.md and matrices.csv, written above
    # written last: a run with summary.json is finished (a resume is refused), so every other file is complete
    write_atomically(output_dir / "summary.json", summary.json())
    fault_point("finished")
    return summary.as_dict()
