"""A pair of the pairs file as one typed record: its two sides (`Side`) and what belongs to the pair (`Pair`).

Each field is a pairs-file column, named once here: a side's field `f` is the file's `f_a` and `f_b` (and, once
a patching item takes one side as its source and the other as its target, the table's `source_f` / `target_f`),
a pair's field is the column of that name. A field made with `passes()` only passes through to predictions.csv:
patching never reads it; `passing_values` gives an item's values and the writer joins them to the rows by item id.
A new pairs column is one field here (plus its test): the file's defaults, the duplicate check and the table's
columns all derive from these records.
"""

from dataclasses import MISSING, dataclass, field, fields


def passes(default: str = "") -> field:
    """A field that only passes through to predictions.csv (joined to the rows by item id)."""
    return field(default=default, metadata={"passes": True})


@dataclass(frozen=True)
class Side:
    """One side of a pair: a word and the clip it is heard in.

    word, lang: the word and its language (default en); audio: its recording (resolved path; "" = synthesised);
    start, end: the word's span in the recording, seconds as written ("" = the whole recording); speaker: who
    speaks it in a corpus, accent: theirs where the corpus says, take: which of the speaker's recordings of the
    word it is (the three pass through); context: the recording's words around it, `{}` for the word (the carrier
    of natural speech; "" = heard alone); context_start, context_end: the clip around the word (seconds)."""

    word: str
    lang: str = "en"
    audio: str = ""
    start: str = ""
    end: str = ""
    speaker: str = passes()
    accent: str = passes()
    take: str = passes()
    context: str = ""
    context_start: str = ""
    context_end: str = ""

    def heard_in(self, carrier: str) -> str:
        """The text the side's clip is heard in, `{}` for the word: its recording's context, else the pair's
        carrier sentence ("" = the word alone)."""
        return self.context or carrier


@dataclass(frozen=True)
class Pair:
    """A row of the pairs file: `pair_id` (made up as p00000... when the file has none), the sides `a` and `b`,
    the pair's `category`, the `carrier` sentence its synthesised words are spoken in (`{}` for the word), and the
    corpus and licence of a corpus pair (passing through)."""

    pair_id: str = field(metadata={"passes": True})
    a: Side
    b: Side
    category: str = passes()
    carrier: str = ""
    corpus: str = passes()
    licence: str = passes()
    concept: str = passes()

    def side(self, letter: str) -> Side:
        """Side `a` or `b`."""
        return getattr(self, letter)


SIDE_FIELDS = fields(Side)
PAIR_FIELDS = [f for f in fields(Pair) if f.type not in (Side, "Side")]
LETTERS = ("a", "b")
ROLES = ("source", "target")


def default_of(f) -> str:
    """What an empty cell of the field's column becomes ("" for a required field: the check refuses it)."""
    return "" if f.default is MISSING else f.default


def file_columns() -> dict[str, str]:
    """Every pairs-file column the records read, with the value an empty or missing cell takes (pair_id, made up
    when missing, left out)."""
    columns = {f"{f.name}_{letter}": default_of(f) for f in SIDE_FIELDS for letter in LETTERS}
    return columns | {f.name: default_of(f) for f in PAIR_FIELDS if f.name != "pair_id"}


def stimulus_columns() -> list[str]:
    """The columns that make a pair's clips and words (the ones that do not pass through): two rows equal in
    these are the same stimulus."""
    side = [f"{f.name}_{letter}" for f in SIDE_FIELDS if not f.metadata.get("passes") for letter in LETTERS]
    return side + [f.name for f in PAIR_FIELDS if not f.metadata.get("passes")]


def side_of(row, letter: str) -> Side:
    """Side `letter` of a pairs-table row (a mapping of column -> cell)."""
    return Side(**{f.name: row[f"{f.name}_{letter}"] for f in SIDE_FIELDS})


def pair_of(row) -> Pair:
    """The `Pair` of a checked pairs-table row."""
    return Pair(a=side_of(row, "a"), b=side_of(row, "b"), **{f.name: row[f.name] for f in PAIR_FIELDS})


def passing_values(pair: Pair, source: Side, target: Side) -> dict[str, str]:
    """An item's values that pass through to predictions.csv, by column: each passing side field as
    `source_<field>` and `target_<field>`, then each passing pair field."""
    sides = {
        f"{role}_{f.name}": getattr(side, f.name)
        for f in SIDE_FIELDS
        if f.metadata.get("passes")
        for role, side in zip(ROLES, (source, target))
    }
    return sides | {f.name: getattr(pair, f.name) for f in PAIR_FIELDS if f.metadata.get("passes")}


PASSING_COLUMNS = list(passing_values(Pair("", Side(""), Side("")), Side(""), Side("")))
