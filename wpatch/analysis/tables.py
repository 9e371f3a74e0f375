"""A run's numbers from its rows alone: the groups, the cells (every condition x layer pair, with intervals), the
layer matrices of the primary condition, and reading a run back (`read_rows_and_summary`).

A condition is one setting of (site, window, alpha, patch_direction, donor); the primary condition, that of the
layer matrices, is the first one asked for that is not a sweep.
"""

import json
from pathlib import Path

import pandas as pd

from wpatch.analysis.stats import bootstrap_interval, pooled_interval
from wpatch.errors import WpatchError
from wpatch.rows import BLANK_IS_NAN, CONDITION, MEASURES, TEXT_COLUMNS, with_sweep_start
from wpatch.run_summary import RunSummary

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


def read_rows(path, **options) -> pd.DataFrame:
    """A rows CSV as written: text columns stay strings (even "", "NaN" or "1"), p_source_language and effect
    may be empty (NaN); `options` go to `pandas.read_csv`."""
    return pd.read_csv(
        path,
        keep_default_na=False,
        na_values={column: [""] for column in BLANK_IS_NAN},
        dtype={column: str for column in TEXT_COLUMNS},
        **options,
    )


def row_groups(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Named subsets of the rows: all; items whose clean source clip is recognised (the honest denominator);
    each category and its recognised part; each voice when a run has several; same and different speakers
    (`speaker_groups`) when the clips are a corpus's recordings."""
    groups = {"all": rows, "recognised": rows[rows["source_recognised"]]}
    for category, frame in rows.groupby("category"):
        if category:
            groups[f"category={category}"] = frame
            groups[f"category={category}|recognised"] = frame[frame["source_recognised"]]
    if rows["voice"].nunique() > 1:
        groups |= {f"voice={voice}": frame for voice, frame in rows.groupby("voice")}
    return groups | speaker_groups(rows)


def speaker_groups(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The rows whose both clips name a speaker (recordings of a corpus), as `speakers=same` (one speaker says
    both words) and `speakers=different`, with their recognised parts; and, where the corpus gives accents, each
    source speaker's accent (`source_accent=...`): does a patched state carry the speaker or the word?"""
    if "source_speaker" not in rows:
        return {}
    spoken = rows[(rows["source_speaker"] != "") & (rows["target_speaker"] != "")]
    same = spoken["source_speaker"] == spoken["target_speaker"]
    groups = {}
    for name, frame in (("same", spoken[same]), ("different", spoken[~same])):
        if not frame.empty:
            groups[f"speakers={name}"] = frame
            groups[f"speakers={name}|recognised"] = frame[frame["source_recognised"]]
    for accent, frame in spoken.groupby("source_accent") if "source_accent" in spoken else ():
        if accent:
            groups[f"source_accent={accent}"] = frame
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


def primary_condition(rows: pd.DataFrame) -> dict:
    """The condition the layer matrices are for: the first one asked for that is not a sweep."""
    conditions = rows[CONDITION].drop_duplicates().to_dict("records")
    return next((c for c in conditions if c["window"] != "sweep"), conditions[0])


def cell_matrix(cells: pd.DataFrame, value: str, index="source_layer", columns="target_layer") -> pd.DataFrame:
    """One column of a cells table as a matrix, every cell kept (NaN where a value is missing)."""
    matrix = cells.groupby([index, columns])[value].mean().unstack(columns)
    return matrix.astype(float)


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


def not_a_run(folder: Path) -> str:
    """Why `folder` holds no finished run (it has no predictions.csv, or no summary.json: the run or merge did not
    finish), and the way out."""
    if not folder.exists():
        return f"run folder {folder} does not exist; give the --writer.output_dir of a finished run"
    if not folder.is_dir():
        return f"{folder} is a file, not a run folder; give the --writer.output_dir of a finished run"
    missing = "no summary.json" if (folder / "predictions.csv").is_file() else "no predictions.csv yet"
    try:
        merged_from = json.loads((folder / "run.json").read_text()).get("merged_from")
    except (OSError, ValueError, AttributeError):
        merged_from = None
    if merged_from:
        shards = " ".join(map(str, merged_from))
        return (
            f"run folder {folder} holds an unfinished merge ({missing}); finish it with wpatch merge {shards} --out "
            f"{folder}"
        )
    if (folder / "run.json").exists() or (folder / "parts").is_dir():
        config = folder / "config.yaml"
        how = f"wpatch predict --config {config} --writer.resume true" if config.exists() else "--writer.resume true"
        return f"run folder {folder} holds an unfinished run ({missing}); finish it with {how}"
    if (folder / "predictions.csv").is_file():
        return f"{folder} holds no finished run (no summary.json, no run.json); give the --writer.output_dir of one"
    return f"{folder} is not a wpatch run (no predictions.csv); give the --writer.output_dir of a finished run"


def read_rows_and_summary(folder) -> tuple[pd.DataFrame, dict]:
    """A run read back: its predictions.csv as a DataFrame (transcripts and words stay strings, "" included)
    and its summary.json as a dict (empty when the run has not been summarised yet). A folder without
    predictions.csv is refused (`WpatchError`), saying what it is."""
    folder = Path(folder)
    if not (folder / "predictions.csv").is_file():
        raise WpatchError(not_a_run(folder))
    rows = read_rows(folder / "predictions.csv")
    summary_path = folder / "summary.json"
    return rows, RunSummary.read(summary_path).as_dict() if summary_path.exists() else {}
