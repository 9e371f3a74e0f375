"""Word alignment files, read strictly: a file that does not parse completely is refused in one line naming the
file and the line, never read in part (a TextGrid cut short would otherwise lose its last words unnoticed).

Text: UTF-8 (with or without a byte-order mark), or UTF-16 with its byte-order mark (as Praat saves labels that
are not ASCII); anything else is refused, naming the line, with the way to convert it.

Praat TextGrid, text format (long or short, as Praat and the Montreal Forced Aligner write it): Praat reads it as
a flat sequence of numbers, "strings" (`""` inside for a quote) and <flags>; all else (`xmin =`, `item [1]:`,
`! comments`) is there for the eye. The sequence: "ooTextFile", "TextGrid", xmin, xmax, <exists>, the number of
tiers, then per tier its class ("IntervalTier" or "TextTier"), name, xmin, xmax and number of entries, and per
entry xmin, xmax, text (a point: its time and mark). Nothing may follow the last tier.

CTM: lines `RECORDING CHANNEL START DURATION WORD [CONFIDENCE ...]` (seconds); blank lines and `;;` comments are
skipped.
"""

import codecs
import math
import re
from pathlib import Path
from typing import NamedTuple

from wpatch.errors import WpatchError, inline

RESAVE = "save it from Praat or the aligner again"
TOKEN = re.compile(r'"(?:[^"]|"")*"|"|<[^<>\s]*>|![^\n]*|[^\s"]+')
NUMBER = re.compile(r"[+-]?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?")  # Praat reads a number's leading digits ("0s": 0)
INTERVAL_TIER, POINT_TIER = "IntervalTier", "TextTier"


class Word(NamedTuple):
    """One labelled span of an alignment file and the line it is given on."""

    line: int
    start: float
    end: float
    label: str


class Token(NamedTuple):
    kind: str  # "number", "string" or "flag"
    value: float | str
    line: int


def read_text(path: Path, kind: str) -> str:
    """The file's text: UTF-16 where it starts with a byte-order mark, else UTF-8 (a mark allowed); other bytes
    are refused, naming the line they are on."""
    data = path.read_bytes()
    utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    try:
        return data.decode("utf-16" if utf16 else "utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].decode(error.encoding, errors="replace").count("\n") + 1
        raise WpatchError(
            f"{kind} {path} line {line} is not {'UTF-16' if utf16 else 'UTF-8'} text (byte {data[error.start]:#04x}); "
            f"save it as UTF-8 (from Latin-1: iconv -f latin1 -t utf-8 {path.name} > utf8 && mv utf8 {path.name})"
        ) from None


def tokens(text: str) -> list[Token]:
    """The numbers, strings and flags of a TextGrid's text, each with its line; a string left open is refused."""
    found, line, at = [], 1, 0
    for match in TOKEN.finditer(text):
        line += text.count("\n", at, match.start())
        at, word = match.start(), match.group()
        if word == '"':
            raise ValueError(f"line {line}: a string opened here is never closed")
        if word.startswith('"'):
            found.append(Token("string", word[1:-1].replace('""', '"'), line))
        elif word.startswith("<") and word.endswith(">"):
            found.append(Token("flag", word, line))
        elif number := NUMBER.match(word):
            found.append(Token("number", float(number.group()), line))
    return found


class Reader:
    """Takes a TextGrid's tokens in order, refusing one of the wrong kind or a file that ends early."""

    def __init__(self, path: Path, text: str):
        self.path, self.at, self.last_line = path, 0, text.rstrip().count("\n") + 1
        try:
            self.tokens = tokens(text)
        except ValueError as error:
            raise WpatchError(f"TextGrid {path} {error}; {RESAVE}") from None

    def take(self, kind: str, what: str) -> Token:
        if self.at == len(self.tokens):
            raise WpatchError(
                f"TextGrid {self.path} ends at line {self.last_line} where {what} should follow: it is cut short; "
                f"{RESAVE}"
            )
        token = self.tokens[self.at]
        if token.kind != kind or (kind == "number" and not math.isfinite(token.value)):
            raise WpatchError(
                f"TextGrid {self.path} line {token.line}: {shown(token)} where {what} should be; {RESAVE}"
            )
        self.at += 1
        return token

    def number(self, what: str) -> float:
        return self.take("number", what).value

    def count(self, what: str) -> int:
        token = self.take("number", what)
        if token.value < 0 or not token.value.is_integer():
            raise WpatchError(f"TextGrid {self.path} line {token.line}: {shown(token)} is not {what}; {RESAVE}")
        return int(token.value)

    def string(self, what: str) -> str:
        return self.take("string", what).value


def shown(token: Token) -> str:
    """A token as the file has it, shortened."""
    text = f"{token.value:g}" if token.kind == "number" else inline(token.value)
    text = text if len(text) <= 40 else text[:40] + "..."
    return f'"{text}"' if token.kind == "string" else text


def textgrid_tiers(path: Path) -> dict[str, list[Word]]:
    """Each interval tier of a TextGrid text file (name -> its intervals, in file order); point tiers are read and
    passed over."""
    with open(path, "rb") as file:
        if file.read(12) == b"ooBinaryFile":
            raise WpatchError(f"TextGrid {path} is in Praat's binary format; save it as a text file from Praat")
    reader = Reader(path, read_text(path, "TextGrid"))
    for expected, what in (("ooTextFile", "File type"), ("TextGrid", "Object class")):
        token = reader.take("string", f'{what} = "{expected}"')
        if token.value not in (expected, f"{expected} short"):
            raise WpatchError(
                f'TextGrid {path} line {token.line}: {shown(token)} where {what} = "{expected}" should be; {RESAVE}'
            )
    reader.number("the grid's xmin")
    reader.number("the grid's xmax")
    present = reader.take("flag", "<exists>").value == "<exists>"
    tiers = {}
    for _ in range(reader.count("the number of tiers") if present else 0):
        kind = reader.take("string", 'a tier class ("IntervalTier" or "TextTier")')
        if kind.value not in (INTERVAL_TIER, POINT_TIER):
            raise WpatchError(
                f'TextGrid {path} line {kind.line}: tier class {shown(kind)} is neither "IntervalTier" nor '
                f'"TextTier"; {RESAVE}'
            )
        name = reader.string("the tier's name")
        reader.number("the tier's xmin")
        reader.number("the tier's xmax")
        entries = []
        for _ in range(reader.count("the tier's number of entries")):
            start = reader.take("number", "an entry's start")
            end = reader.number("an interval's end") if kind.value == INTERVAL_TIER else start.value
            entries.append(Word(start.line, start.value, end, reader.string("an entry's text")))
        if kind.value == INTERVAL_TIER:
            tiers.setdefault(name, entries)
    if reader.at < len(reader.tokens):
        extra = reader.tokens[reader.at]
        raise WpatchError(f"TextGrid {path} line {extra.line}: {shown(extra)} follows the last tier; {RESAVE}")
    return tiers


def ctm_lines(path: Path) -> list[tuple[str, Word]]:
    """(recording, word) of each line of a CTM file."""
    words = []
    for line_number, line in enumerate(read_text(path, "CTM").split("\n"), 1):
        fields = line.split()
        if not fields or line.startswith(";;"):
            continue
        try:
            name, _, start, duration, word = fields[:5]
            start, duration = float(start), float(duration)
        except ValueError:
            raise WpatchError(
                f"CTM {path} line {line_number} is not RECORDING CHANNEL START DURATION WORD; fix the line"
            ) from None
        words.append((name, Word(line_number, start, start + duration, word)))
    return words
