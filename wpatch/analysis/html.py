"""report.html: a run's page to click through and listen to, opening offline from the run folder.

The main layer matrices are plotly heatmaps (hover: mean, 95% interval, n; measure and group chosen from menus,
opening on effect and the recognised items where the run has them); clicking a cell marks it and lists its items
(words, transcript, measures, recognised), the list following the menus, with an audio player and the log-mel
spectrogram of each clip, the patched window marked unless it is `all` (clips from `clips/`, see
`wpatch.run_folder.clips`); below,
report.md (settings, every condition, the phonetic-feature maps, sanity checks). The page is a jinja2 template
(`templates/report.html.j2`, with its style and script `report.css`, `report.js`); plotly's script is written beside it
(`plotly.min.js`), so nothing is fetched.

Nothing from the data runs: values reach the page as escaped text (the template escapes, its data is JSON with `<`
escaped, the script sets only `textContent`), report.md is rendered without raw HTML (`markdown_html`), and the page's
Content-Security-Policy lets only its own files and its own inline style and script (by hash) load or run.

The page holds aggregates and compact columns, not one element per row: the cells' rows are arrays (item, transcript
number, window, measures) that the page turns into table rows only for the clicked cell.
"""

import base64
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly
import plotly.graph_objects as go
from jinja2 import Environment, PackageLoader, select_autoescape

from wpatch.analysis.markdown_html import markdown_html
from wpatch.analysis.tables import primary_condition, row_groups
from wpatch.atomic import write_atomically
from wpatch.rows import CONDITION, MEASURE_NAMES, MEASURES, SCALES
from wpatch.sites import SITES

PLOTLY_JS = "plotly.min.js"
INDEX = "clips/index.csv"  # which clips each item has (written by `wpatch.run_folder.clips`)
SHOWN_FIRST = 100  # item rows a clicked cell shows before "show all"


def rounded(values) -> list:
    """Numbers to 4 decimals for the page, NaN as null (JSON has no NaN)."""
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4) for v in values]


def heatmap_traces(matrices: pd.DataFrame) -> dict:
    """One plotly heatmap (as JSON-ready dict) per group and measure from matrices.csv's long table; source layer
    down, target layer across, on the measure's fixed colour scale."""
    traces = {}
    for (group, measure), frame in matrices.groupby(["group", "measure"], sort=False):
        table = {v: frame.pivot_table(index="s", columns="t", values=v, dropna=False) for v in ("mean", "low", "high")}
        counts = frame.pivot_table(index="s", columns="t", values="n", dropna=False)
        mean = table["mean"]
        custom = np.dstack([table["low"].to_numpy(), table["high"].to_numpy(), counts.to_numpy()])
        low, high = SCALES.get(measure, (0.0, 1.0))
        trace = go.Heatmap(
            z=[rounded(r) for r in mean.to_numpy()],
            x=[int(t) for t in mean.columns],
            y=[int(s) for s in mean.index],
            customdata=[[rounded(c) for c in r] for r in custom],
            zmin=low,
            zmax=high,
            colorscale="RdBu_r" if measure == "effect" else "Viridis",
            colorbar={"title": {"text": MEASURE_NAMES.get(measure, measure)}},
            texttemplate="%{z:.2f}",
            hovertemplate="source layer %{y} → target layer %{x}<br>mean %{z:.3f}<br>95% interval "
            "[%{customdata[0]:.3f}, %{customdata[1]:.3f}]<br>n %{customdata[2]} items<extra></extra>",
        )
        traces.setdefault(group, {})[measure] = json.loads(go.Figure(trace).to_json())["data"][0]
    return traces


def cell_columns(rows: pd.DataFrame, items: pd.DataFrame, measures: list[str]) -> tuple[dict, list[str]]:
    """The primary condition's rows per cell "s,t" as columns: item (position in `items`), transcript (number in
    the returned transcript list), window [start, end) in encoder frames (null for decoder sites and for window
    `all`, which is the whole clip), measures."""
    position = pd.Series(np.arange(len(items)), index=items["item_id"])
    transcripts, numbers = np.unique(rows["transcript"].to_numpy(dtype=str), return_inverse=True)
    rows = rows.assign(_item=position[rows["item_id"]].to_numpy(), _transcript=numbers)
    site, window = rows["site"].iloc[0], rows["window"].iloc[0]
    in_encoder = site in SITES and not SITES[site].in_decoder and window != "all"
    cells = {}
    for (s, t), frame in rows.groupby(["source_layer", "target_layer"]):
        cells[f"{s},{t}"] = {
            "item": frame["_item"].tolist(),
            "transcript": frame["_transcript"].tolist(),
            "window": frame[["window_start", "window_end"]].to_numpy().tolist() if in_encoder else None,
            **{m: rounded(frame[m].astype(float)) for m in measures},
        }
    return cells, transcripts.tolist()


def item_columns(items: pd.DataFrame, clips: pd.DataFrame | None) -> dict:
    """Per item (the primary condition's, in item order): words, voice, category, recognised, its clips and what
    the model heard of each (their clean transcripts)."""
    columns = {
        "item_id": items["item_id"].tolist(),
        "source_word": items["source_word"].tolist(),
        "target_word": items["target_word"].tolist(),
        "voice": items["voice"].tolist(),
        "category": items["category"].tolist(),
        "recognised": items["source_recognised"].astype(bool).tolist(),
        "patch_direction": items["patch_direction"].tolist(),
    }
    if clips is not None:
        clips = clips.set_index("item_id").reindex(items["item_id"])
        names = ["source_clip", "source_frames", "target_clip", "target_frames", "source_heard", "target_heard"]
        for column in (c for c in names if c in clips):  # a run made before the clean transcripts were kept has none
            columns[column] = [None if pd.isna(v) else v for v in clips[column].tolist()]
    return columns


def first_shown(choices: list[str], wanted: str) -> str | None:
    """The choice the page opens on: `wanted` where there is one, else the first (None when there is none)."""
    return wanted if wanted in choices else next(iter(choices), None)


def page_data(rows: pd.DataFrame, matrices: pd.DataFrame, clips: pd.DataFrame | None, summary: dict) -> dict:
    """Everything the page's glue reads: heatmaps, groups (items in each), items, cells, the model's name."""
    primary = summary.get("primary_condition") or primary_condition(rows)
    mine = rows[(rows[CONDITION] == pd.Series(primary)).all(axis=1)]
    measures = [m for m in MEASURES if mine[m].notna().any()]
    items = mine.drop_duplicates("item_id").sort_values("item_id")
    position = pd.Series(np.arange(len(items)), index=items["item_id"])
    groups = {
        name: position[frame["item_id"].unique()].sort_values().tolist()
        for name, frame in row_groups(mine).items()
        if name != "all"
    }
    cells, transcripts = cell_columns(mine, items, measures)
    return {
        "traces": heatmap_traces(matrices),
        "measures": [[m, MEASURE_NAMES.get(m, m)] for m in measures],  # a list: jinja's tojson sorts keys
        "groups": groups,
        "items": item_columns(items, clips),
        "cells": cells,
        "transcripts": transcripts,
        "shown_first": SHOWN_FIRST,
        "model": model_name(summary),
    }


def model_name(summary: dict) -> str:
    """The run's model as a reader knows it: its name, or a local checkpoint's file name."""
    return Path(str(summary.get("model") or "?")).name


def page_title(folder: Path, rows: pd.DataFrame, summary: dict) -> str:
    """What the run is, for the page's title and heading: model, pairs file, items and layer pairs, folder."""
    pairs = Path(str(summary.get("pairs_file") or "?")).name
    cells = rows[["source_layer", "target_layer"]].drop_duplicates()
    return (
        f"wpatch run: {model_name(summary)} on {pairs}, {rows['item_id'].nunique()} items x {len(cells)} layer "
        f"pairs ({folder.resolve().name})"
    )


def report_part(report: str) -> str:
    """report.md as HTML under the page's own title: each heading one level down (its "# wpatch run" an h2)."""
    return re.sub(r"<(/?)h([1-5])>", lambda m: f"<{m[1]}h{int(m[2]) + 1}>", markdown_html(report))


def csp_hash(text: str) -> str:
    """The Content-Security-Policy source that allows an inline script or style whose text is `text`."""
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def report_html(folder: Path, rows: pd.DataFrame, summary: dict) -> str:
    """The page for the run in `folder` (its matrices.csv, clips/index.csv and report.md, when there)."""
    folder = Path(folder)
    matrices = pd.read_csv(folder / "matrices.csv") if (folder / "matrices.csv").exists() else pd.DataFrame()
    clips = pd.read_csv(folder / INDEX) if (folder / INDEX).exists() else None
    report = (folder / "report.md").read_text() if (folder / "report.md").exists() else ""
    environment = Environment(loader=PackageLoader("wpatch.analysis"), autoescape=select_autoescape(["j2"]))
    environment.filters["csp_hash"] = csp_hash
    data = page_data(rows, matrices, clips, summary) if not matrices.empty else None
    groups = list(data["traces"]) if data else []
    measures = dict(data["measures"]) if data else {}
    return environment.get_template("report.html.j2").render(
        title=page_title(folder, rows, summary),
        data=data,
        groups=groups,
        measures=measures,
        # the README's advice: read effect on the recognised items first
        measure_shown=first_shown(list(measures), "effect"),
        group_shown=first_shown(groups, "recognised"),
        has_clips=clips is not None,
        report=report_part(report),
        plotly_js=PLOTLY_JS,
    )


def write_report_html(folder, rows: pd.DataFrame, summary: dict) -> Path:
    """Write `folder`/report.html and plotly's script beside it (when missing or of another version)."""
    folder = Path(folder)
    script = plotly.offline.get_plotlyjs()
    if not (folder / PLOTLY_JS).exists() or (folder / PLOTLY_JS).stat().st_size != len(script.encode()):
        write_atomically(folder / PLOTLY_JS, script)
    write_atomically(folder / "report.html", report_html(folder, rows, summary))
    return folder / "report.html"
