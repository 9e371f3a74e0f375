"""The data that flows through a run, named: the batch the DataModule serves and the row the module returns.

`PairBatch` is what `datamodules.PairDataModule.collate` makes and `wpatch.patching.module.PatchingModule.predict_step`
reads; `ResultRow` is one row of `predictions.csv` (its fields are the columns, in order: `ROW_COLUMNS`).
The planned rows in between are `wpatch.patching.plan.PlannedRow`.

`ResultRow` is also the measure schema: each field says what it is (`Column`), and everything the analysis
needs to know of a column derives from it: the measures it summarises (`MEASURES`, in their order), their colour
scales (`SCALES`) and names (`MEASURE_NAMES`), the columns read as text (`TEXT_COLUMNS`) and those whose blank
cell means NaN (`BLANK_IS_NAN`). A new measure is its function (`wpatch.patching.measures`), its field here, its test.
"""

from dataclasses import dataclass, field, fields
from typing import TypedDict

from torch import Tensor


class PairBatch(TypedDict):
    """A batch of B items. Per side (source, target, control): `<side>_mel` (B, n_mels, 3000) log-mels,
    `<side>_clip` (B,) clip indices (equal indices = the same clip) and `<side>_span` (B, 2) the encoder frames
    where the clip's word is spoken; the rest is per item, in item order."""

    item_id: Tensor
    source_mel: Tensor
    target_mel: Tensor
    control_mel: Tensor
    source_clip: Tensor
    target_clip: Tensor
    control_clip: Tensor
    source_span: Tensor
    target_span: Tensor
    control_span: Tensor
    source_tokens: list[list[list[int]]]  # token ids of each surface form of the source word
    target_tokens: list[list[list[int]]]
    control_tokens: list[list[list[int]]]  # the control word's (in the source word's language)
    pair_id: list[str]
    direction: list[str]  # the pair direction: a->b or b->a
    category: list[str]
    voice: list[str]
    source_word: list[str]
    target_word: list[str]
    control_word: list[str]
    source_lang: list[str]
    target_lang: list[str]
    source_speaker: list[str]  # who speaks each clip in a corpus ("" for synthesised clips and plain recordings)
    target_speaker: list[str]
    corpus: list[str]
    licence: list[str]
    # the text each side's clip is heard in, `{}` for its word: the carrier sentence, a recorded word's context in
    # its recording ("": the word alone)
    source_carrier: list[str]
    target_carrier: list[str]
    control_carrier: list[str]


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
    """One row of predictions.csv: the item, the patch, and every measure (README: "Columns of predictions.csv").
    Every field must be given: a measure left out is an error, never an empty column."""

    item_id: int
    pair_id: str
    direction: str  # pair direction: a->b (word A's clip is the source) or b->a
    category: str
    voice: str
    source_word: str
    target_word: str
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
    # a corpus pair's speakers, corpus and licence (empty for synthesised words); last, so older columns stay first
    source_speaker: str = column()
    target_speaker: str = column()
    corpus: str = column()
    licence: str = column()
    # the text the row's transcript is read in, `{}` for the word: the carrier sentence, or for a recorded word in
    # its context the recipient clip's words ("" for a word alone); whether the transcript kept its other words (a
    # row counts for override, retained and transfer only if so; always true for a word alone)
    carrier: str = column()
    carrier_kept: bool = column()

    def to_dict(self) -> dict:
        """Column -> value, in column order (what Lightning's predictions and the writer carry)."""
        return {column: getattr(self, column) for column in ROW_COLUMNS}


ROW_COLUMNS = [f.name for f in fields(ResultRow)]
COLUMNS = {f.name: f.metadata.get("column", Column()) for f in fields(ResultRow)}
MEASURES = tuple(sorted((c for c in COLUMNS if COLUMNS[c].summarised), key=lambda c: COLUMNS[c].summarised))
SCALES = {name: c.scale for name, c in COLUMNS.items() if c.scale}
MEASURE_NAMES = {name: c.label or name for name, c in COLUMNS.items() if c.summarised}
TEXT_COLUMNS = [f.name for f in fields(ResultRow) if f.type in (str, "str")]
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
    pair_id: str
    direction: str
    category: str
    voice: str
    source_word: str
    target_word: str
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
        return {name: getattr(self, name) for name in ATTRIBUTION_COLUMNS}


ATTRIBUTION_COLUMNS = [f.name for f in fields(AttributionRow)]
ATTRIBUTION_KEY = ["item_id", "patch_direction", "site", "layer", "window"]  # one row each


ITEM_FIELDS = ("pair_id", "direction", "category", "voice", "source_word", "target_word")


def item_fields(batch: PairBatch, b: int) -> dict:
    """Item `b`'s identity as the batch carries it: the fields every row of that item repeats."""
    return {name: batch[name][b] for name in ITEM_FIELDS}
