"""The data that flows through a run, named: the batch the DataModule serves and the row the module returns.

`PairBatch` is what `datamodules.PairDataModule.collate` makes and `wpatch.patching.module.PatchingModule.predict_step`
reads: item ids and three `BatchSide`s. `ResultRow` is what the module computes for one row of `predictions.csv`;
the writer joins the item's own columns (`ITEM_FIELDS`, and `PASSING`: what passes through from the pairs file,
`wpatch.sides`) by item id, and the table's columns, in order, are `ROW_COLUMNS`. The planned rows in between are
`wpatch.patching.plan.PlannedRow`.

`ResultRow` is also the measure schema: each field says what it is (`Column`), and everything the analysis
needs to know of a column derives from it: the measures it summarises (`MEASURES`, in their order), their colour
scales (`SCALES`) and names (`MEASURE_NAMES`), the columns read as text (`TEXT_COLUMNS`) and those whose blank
cell means NaN (`BLANK_IS_NAN`). A new measure is its function (`wpatch.patching.measures`), its field here, its test.
"""

from dataclasses import dataclass, field, fields
from typing import NamedTuple, TypedDict

from torch import Tensor

from wpatch.sides import PASSING_COLUMNS


class BatchSide(NamedTuple):
    """One side (source, target or control) of every item of a batch of B items, in item order."""

    mel: Tensor  # (B, n_mels, 3000) log-mels
    clip: Tensor  # (B,) clip indices (equal indices = the same clip)
    span: Tensor  # (B, 2) the encoder frames where the clip's word is spoken
    tokens: list[list[list[int]]]  # token ids of each surface form of the word (the control's in the source's language)
    word: list[str]
    lang: list[str]
    carrier: list[str]  # the text the clip is heard in, `{}` for its word (`wpatch.sides.Side.heard_in`)
    samples: Tensor | None = None  # a CTC model's clips: `mel` is (B, samples) input values, this their lengths


class PairBatch(TypedDict):
    """A batch of B items: their ids and their three sides. What only passes through to the table (pair id,
    direction, category, voice, speakers, corpus, ...) stays out: the writer joins it by item id."""

    item_id: Tensor
    source: BatchSide
    target: BatchSide
    control: BatchSide


@dataclass(frozen=True)
class Column:
    """What a column of predictions.csv is.

    summarised: its place among the measures a run summarises (layer matrices, figures, the console), counted
        from 1; None: not summarised.
    label: its name on figures (the column name if None).
    scale: (low, high) of every figure's colour scale for it, the same in every run so figures compare by colour.
    blank_is_nan: an empty cell means NaN (a measure that does not apply to the row), not an empty string.
    """

    summarised: int | None = None
    label: str | None = None
    scale: tuple[float, float] | None = None
    blank_is_nan: bool = False


def column(**info) -> field:
    """A `ResultRow` field described by `Column(**info)`."""
    return field(metadata={"column": Column(**info)})


RATE = (0.0, 1.0)


@dataclass(frozen=True)
class ResultRow:
    """What patching computes for one row of predictions.csv: the item, the patch, and every measure (README:
    "Columns of predictions.csv"); the writer joins the item's own columns (`ITEM_FIELDS`, `PASSING`) by item id.
    Every field must be given: a measure left out is an error, never an empty column."""

    item_id: int
    site: str
    source_layer: int
    target_layer: int
    window: str
    window_start: int  # encoder frames [start, end); for the dec_* sites decoder token positions
    window_end: int
    alpha: float
    patch_direction: str  # denoising (source into the target's run) or noising (target into the source's run)
    donor: str  # whose clip gave the activation: source, target or control
    donor_word: str
    transcript: str
    override: bool = column(summarised=1, label="override rate", scale=RATE)
    retained: bool = column(scale=RATE)
    transfer: bool = column(summarised=2, label="transfer rate", scale=RATE)
    logp_source: float = column()
    logp_target: float = column()
    score: float = column(summarised=3, label="score (P source word)", scale=RATE)
    # NaN where it does not apply (one language, or an English-only model)
    p_source_language: float = column(summarised=5, label="P(source language)", scale=RATE, blank_is_nan=True)
    source_recognised: bool = column()
    ld_source_clean: float = column()
    ld_target_clean: float = column()
    # NaN where effect_valid is false
    effect: float = column(
        summarised=4, label="effect (share of the clean gap closed)", scale=(-1.0, 1.0), blank_is_nan=True
    )
    effect_valid: bool = column()
    # the text the row's transcript is read in, `{}` for the word: the carrier sentence, or for a recorded word in
    # its context the recipient clip's words ("" for a word alone); whether the transcript kept its other words (a
    # row counts for override, retained and transfer only if so; always true for a word alone)
    carrier: str = column()
    carrier_kept: bool = column()

    def to_dict(self) -> dict:
        """Field -> value, in field order (what Lightning's predictions and the writer carry)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# the item's own columns, joined to its rows by item id where the table is written: who it is (after item_id) and
# what passes through from the pairs file (`wpatch.sides`; after the measures, before the carrier columns)
ITEM_FIELDS = ("pair_id", "direction", "category", "voice", "source_word", "target_word")
PASSING = [c for c in PASSING_COLUMNS if c not in ITEM_FIELDS]
CARRIER_COLUMNS = ("carrier", "carrier_kept")
VOICE_COLUMNS = ("source_voice", "target_voice")  # the speaker whose clip each side was ("" for a recording)
MEASURED = [f.name for f in fields(ResultRow)]
ROW_COLUMNS = [
    "item_id",
    *ITEM_FIELDS,
    *(c for c in MEASURED[1:] if c not in CARRIER_COLUMNS),
    *PASSING,
    *CARRIER_COLUMNS,
    *VOICE_COLUMNS,  # last: added after the others, so tables made before them lead in the same order
]
COLUMNS = {c: Column() for c in ROW_COLUMNS} | {f.name: f.metadata.get("column", Column()) for f in fields(ResultRow)}
MEASURES = tuple(sorted((c for c in COLUMNS if COLUMNS[c].summarised), key=lambda c: COLUMNS[c].summarised))
SCALES = {name: c.scale for name, c in COLUMNS.items() if c.scale}
MEASURE_NAMES = {name: c.label or name for name, c in COLUMNS.items() if c.summarised}
TEXT_COLUMNS = [*ITEM_FIELDS, *PASSING, *VOICE_COLUMNS, *(f.name for f in fields(ResultRow) if f.type in (str, "str"))]
BLANK_IS_NAN = [name for name, c in COLUMNS.items() if c.blank_is_nan]
CONDITION = ["site", "window", "alpha", "patch_direction", "donor"]  # the columns that name one patch condition


def with_sweep_start(rows):
    """`rows` (a DataFrame of predictions) with a `sweep_start` column: the window start of sweep rows, -1 for the
    others; with `CONDITION` and the layer pair it keys one cell of cells.csv and features.csv."""
    return rows.assign(sweep_start=rows["window_start"].where(rows["window"] == "sweep", -1))


@dataclass(frozen=True)
class AttributionRow:
    """One row of attributions.csv (`--model.method atp`): the AtP estimate of patching the donor's `site` of
    encoder block `layer` (s == t) on one window's frames, for one item and patch direction, and where it was
    patched for real (`checked`: validate or verify), the real result beside it.

    estimate / patched: the change of the recipient's logit difference logp_source - logp_target (nats), estimated
    and real; estimate_effect / patched_effect: the patched logit difference normalised like `effect` (NaN where
    the clean runs separate the words by less than min_separation); patched and patched_effect are NaN where the
    cell was not patched for real."""

    item_id: int
    patch_direction: str
    site: str
    layer: int
    window: str  # "<start>-<end>" over the speech, or "rest" (every other frame)
    window_start: int
    window_end: int
    frames: int  # how many frames the window holds
    ld_source_clean: float
    ld_target_clean: float
    estimate: float
    estimate_effect: float
    graddrop: float  # --model.graddrop: mean over blocks l of |estimate with block l's gradient dropped|; else NaN
    patched: float
    patched_effect: float
    checked: str  # "validate", "verify" or "" (not patched for real)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


ATTRIBUTION_COLUMNS = ["item_id", *ITEM_FIELDS, *[f.name for f in fields(AttributionRow)][1:]]
ATTRIBUTION_KEY = ["item_id", "patch_direction", "site", "layer", "window"]  # one row each
