"""The data that flows through a run, named: the batch the DataModule serves and the row the module returns.

`PairBatch` is what `datamodules.PairDataModule.collate` makes and `wpatch.module.PatchingModule.predict_step`
reads; `ResultRow` is one row of `predictions.csv` (its fields are the columns, in order: `ROW_COLUMNS`).
The planned rows in between are `wpatch.plan.PlannedRow`.
"""

from dataclasses import dataclass, fields
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
    override: bool
    retained: bool
    transfer: bool
    logp_source: float
    logp_target: float
    score: float
    p_source_language: float  # NaN where it does not apply (one language, or an English-only model)
    source_recognised: bool
    ld_source_clean: float
    ld_target_clean: float
    effect: float  # NaN where effect_valid is false
    effect_valid: bool

    def to_dict(self) -> dict:
        """Column -> value, in column order (what Lightning's predictions and the writer carry)."""
        return {column: getattr(self, column) for column in ROW_COLUMNS}


ROW_COLUMNS = [field.name for field in fields(ResultRow)]
CONDITION = ["site", "window", "alpha", "patch_direction", "donor"]  # the columns that name one patch condition


def with_sweep_start(rows):
    """`rows` (a DataFrame of predictions) with a `sweep_start` column: the window start of sweep rows, -1 for the
    others; with `CONDITION` and the layer pair it keys one cell of cells.csv and features.csv."""
    return rows.assign(sweep_start=rows["window_start"].where(rows["window"] == "sweep", -1))
