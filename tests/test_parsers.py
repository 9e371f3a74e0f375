"""The parsers of outside data (pairs files, TextGrids, CTMs, MSWC's splits table, a corpus folder's alignment
files) on any input: a parse, or one `WpatchError` line, never another exception. Property-based (hypothesis),
bounded and derandomised so every run tries the same inputs; each input that once broke a parser is kept as an
explicit example."""

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wpatch.errors import WpatchError
from wpatch.stimuli.alignments import ctm_lines, textgrid_tiers
from wpatch.stimuli.corpora import mswc_speakers, read_corpus
from wpatch.stimuli.pairs_file import read_pairs

BOUNDED = settings(
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
COLUMNS = ["word_a", "word_b", "pair_id", "category", "audio_a", "start_a", "end_a", "lang_a", "carrier"]
COLUMNS += ["context_a", "context_start_a", "context_end_a", "speaker_a", "corpus"]
CELLS = st.one_of(
    st.sampled_from(["", "bat", "take.wav", "0", "0.1", "0.5", "1", "-1", "nan", "inf", "1e999", "{}", "{} there"]),
    st.sampled_from(["say {} again", "{", "}", "{}{}", "take", "missing.wav", ".", "/", "é", "!!!", "en", "es"]),
    st.sampled_from(["x" * 300, "a\nb", "b\r\n"]),
    st.text(max_size=12),
)
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r"), max_size=8)  # what a label may hold


def parses_or_refuses(parse, *args):
    """The parse, or None where the input is refused with a WpatchError of one line (what the CLI prints)."""
    try:
        return parse(*args)
    except WpatchError as error:
        assert "\n" not in str(error) and "\r" not in str(error), str(error)
        return None


@pytest.fixture
def folder(tmp_path):
    soundfile.write(tmp_path / "take.wav", np.zeros(16000, np.float32), 16000)
    return tmp_path


def csv_cell(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\n\r') else value


@BOUNDED
@given(
    words=st.booleans(),
    header=st.lists(st.one_of(st.sampled_from(COLUMNS), st.text(max_size=6)), max_size=8),
    rows=st.lists(st.lists(CELLS, max_size=9), max_size=4),
)
@example(words=True, header=[], rows=[["a", "a", "a", "a", "a", ""]])  # TypeError: the extra fields became an index
@example(words=True, header=[], rows=[["bat", "pat"], ["a", "b", "c"]])  # pandas' message ended in a line break
@example(words=True, header=["audio_a"], rows=[["bat", "pat", "x" * 300]])  # OSError: file name too long
@example(words=True, header=[], rows=[["a\nb", "take.wav"]] * 2)  # the repeated row's words broke the line
@example(words=True, header=["audio_a"], rows=[["bat", "pat", "a\nb"]])
def test_any_pairs_table_is_read_or_refused(folder, words, header, rows):
    header = ["word_a", "word_b", *header] if words else header or [""]
    text = "\n".join(",".join(map(csv_cell, line)) for line in [header, *rows]) + "\n"
    (folder / "pairs.csv").write_text(text)
    parses_or_refuses(read_pairs, folder / "pairs.csv")


@BOUNDED
@given(data=st.binary(max_size=200))
def test_any_bytes_as_a_pairs_file_are_read_or_refused(folder, data):
    (folder / "pairs.csv").write_bytes(data)
    parses_or_refuses(read_pairs, folder / "pairs.csv")


def textgrid_text(tiers: list[tuple[str, str, list[tuple[float, float, str]]]], short: bool) -> str:
    """A TextGrid text file of these (class, name, entries) tiers, in Praat's long or short format."""
    quote = lambda text: '"' + text.replace('"', '""') + '"'  # noqa: E731
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', ""]
    if short:
        lines += ["0", "100", *(["<exists>", str(len(tiers))] if tiers else ["<absent>"])]
        for kind, name, entries in tiers:
            lines += [quote(kind), quote(name), "0", "100", str(len(entries))]
            for start, end, label in entries:
                lines += [repr(start), *([repr(end)] if kind == "IntervalTier" else []), quote(label)]
        return "\n".join(lines) + "\n"
    lines += ["xmin = 0", "xmax = 100", *(["tiers? <exists>", f"size = {len(tiers)}", "item []:"] if tiers else [])]
    lines += [] if tiers else ["tiers? <absent>"]  # as Praat writes a grid without tiers
    for i, (kind, name, entries) in enumerate(tiers, 1):
        lines += [f"    item [{i}]:", f"        class = {quote(kind)}", f"        name = {quote(name)}"]
        noun = "intervals" if kind == "IntervalTier" else "points"
        lines += ["        xmin = 0", "        xmax = 100", f"        {noun}: size = {len(entries)}"]
        for j, (start, end, label) in enumerate(entries, 1):
            if kind == "IntervalTier":
                lines += [f"        {noun} [{j}]:", f"            xmin = {start!r}", f"            xmax = {end!r}"]
                lines.append(f"            text = {quote(label)}")
            else:
                lines += [
                    f"        {noun} [{j}]:",
                    f"            number = {start!r}",
                    f"            mark = {quote(label)}",
                ]
    return "\n".join(lines) + "\n"


TIMES = st.floats(0, 100, allow_nan=False)
TIERS = st.lists(
    st.tuples(st.sampled_from(["IntervalTier", "TextTier"]), TEXT, st.lists(st.tuples(TIMES, TIMES, TEXT), max_size=3)),
    max_size=3,
)


@BOUNDED
@given(tiers=TIERS, short=st.booleans(), data=st.data())
def test_a_textgrid_is_read_back_whole_and_refused_wherever_it_is_cut_short(folder, tiers, short, data):
    text = textgrid_text(tiers, short)
    path = folder / "take.TextGrid"
    path.write_text(text)
    expected = {}
    for kind, name, entries in tiers:
        if kind == "IntervalTier":
            expected.setdefault(name, [(start, end, label) for start, end, label in entries])
    assert {name: [w[1:] for w in words] for name, words in textgrid_tiers(path).items()} == expected
    cut = data.draw(st.integers(0, len(text.rstrip()) - 1))
    path.write_text(text[:cut])
    with pytest.raises(WpatchError, match=r"TextGrid .*take.TextGrid (ends at )?line \d+"):
        textgrid_tiers(path)


@BOUNDED
@given(text=st.one_of(st.text(max_size=300), st.builds(textgrid_text, TIERS, st.booleans()).map(lambda t: t[::-1])))
@example(text='"ooTextFile"\n"TextGrid"\n"a\nb"\n')  # the string shown where a number should be broke the line
def test_any_text_as_a_textgrid_is_read_or_refused(folder, text):
    (folder / "take.TextGrid").write_text(text)
    parses_or_refuses(textgrid_tiers, folder / "take.TextGrid")


@BOUNDED
@given(data=st.binary(max_size=300))
def test_any_bytes_as_an_alignment_file_are_read_or_refused(folder, data):
    for name, parse in (("take.TextGrid", textgrid_tiers), ("take.ctm", ctm_lines)):
        (folder / name).write_bytes(data)
        parses_or_refuses(parse, folder / name)


CTM_FIELDS = st.one_of(st.sampled_from(["take", "1", "0.1", "0.3", "-1", "nan", "inf", "600", "bed", ";;"]), TEXT)


@BOUNDED
@given(lines=st.lists(st.lists(CTM_FIELDS, max_size=7).map(" ".join), max_size=5), context=st.booleans())
def test_any_ctm_in_a_corpus_folder_is_read_or_refused(folder, lines, context):
    (folder / "take.ctm").write_text("\n".join(lines))
    parses_or_refuses(read_corpus, folder, "en", "recording" if context else "word")


@BOUNDED
@given(data=st.one_of(st.binary(max_size=200), st.lists(st.lists(CELLS, max_size=6), max_size=4)))
def test_any_mswc_splits_table_is_read_or_refused(tmp_path, data):
    (tmp_path / "en").mkdir(exist_ok=True)
    rows = "\n".join(",".join(map(csv_cell, row)) for row in data) if isinstance(data, list) else ""
    table = data if isinstance(data, bytes) else rows.encode()
    (tmp_path / "en" / "en_splits.csv").write_bytes(b"SET,LINK,WORD,VALID,SPEAKER,GENDER\n" + table)
    parses_or_refuses(mswc_speakers, tmp_path, "en")
    (tmp_path / "en" / "en_splits.csv").write_bytes(table)
    parses_or_refuses(mswc_speakers, tmp_path, "en")


def test_a_first_row_longer_than_the_header_is_refused_not_shifted_into_other_columns(tmp_path):
    (tmp_path / "pairs.csv").write_text("word_a,word_b\nbat,pat,extra\nhot,cold\n")  # pandas read word_a 'pat'
    with pytest.raises(WpatchError, match=r"pairs.csv: its first row has more fields than its header; quote a value"):
        read_pairs(tmp_path / "pairs.csv")
