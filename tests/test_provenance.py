"""A run's results cannot be changed silently: a predictions.csv edited since the run wrote it is refused by
`wpatch report`, `wpatch compare`, `wpatch merge` and `load_run`, naming the first row that differs (and with
--allow-edited the summary and report say so first); a re-analysis keeps what the run recorded (environment, seeds,
code version) and adds its own; a merge stopped midway is finished by merging again, and `wpatch report` never
finishes a folder that is not a finished run."""

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import wpatch
from tests.predict_run import main, predict_args
from wpatch.cli import main as wpatch_command
from wpatch.errors import WpatchError

ROOT = Path(__file__).resolve().parents[1]
PAIRS = "word_a,word_b\nbat,pat\nhot,cold\n"  # 4 items on 4 source clips


def args(tmp_path, model, out, *extra):
    """Two pairs, layers 0 and 2, three tokens at most."""
    layers = ["--model.source_layers", "[0, 2]", "--model.target_layers", "[0, 2]", *extra]
    return predict_args(tmp_path, model, out, pairs=PAIRS, batch_size=2, max_tokens=3, options=tuple(layers))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_model_path):
    """A run, and the two shards of the same run."""
    tmp_path = tmp_path_factory.mktemp("provenance")
    main(args(tmp_path, small_model_path, tmp_path / "run"))
    for shard in ("0/2", "1/2"):
        main(args(tmp_path, small_model_path, tmp_path / f"s{shard[0]}", "--data.shard", shard))
    return tmp_path


def refused(capsys, *arguments) -> str:
    """The one line `wpatch ARGUMENTS` ends with (exit 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        wpatch_command(list(map(str, arguments)))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("wpatch: error: "), err
    return err[0]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_an_edited_table_is_refused_naming_its_first_differing_row(runs, tmp_path, capsys):
    edited = tmp_path / "edited"
    shutil.copytree(runs / "run", edited)
    table = lines(edited / "predictions.csv")
    header, row = (next(csv.reader([line])) for line in (table[0], table[3]))  # row 3, line 4 of the file
    column = header.index("override")
    row[column] = str(row[column] != "True")
    written = io.StringIO()
    csv.writer(written, lineterminator="\n").writerow(row)
    (edited / "predictions.csv").write_text("".join([*table[:3], written.getvalue(), *table[4:]]))
    summary, report = (edited / "summary.json").read_bytes(), (edited / "report.md").read_bytes()
    item = row[header.index("item_id")]
    line = refused(capsys, "report", edited)
    assert f"{edited}/predictions.csv row 3 (line 4, item {item}) differs from what the run wrote" in line
    assert "--allow-edited" in line
    assert (edited / "summary.json").read_bytes() == summary and (edited / "report.md").read_bytes() == report
    assert f"{edited}/predictions.csv row 3" in refused(capsys, "compare", runs / "run", edited)
    with pytest.raises(WpatchError, match="row 3 .* allow_edited=True"):
        wpatch.load_run(edited)
    assert "row 3 (line 4" in wpatch.load_run(edited, allow_edited=True).edited

    wpatch_command(["report", str(edited), "--allow-edited"])  # analysed, and said to be edited, first
    first_key, first_value = next(iter(json.loads((edited / "summary.json").read_text()).items()))
    assert first_key == "edited" and "row 3 (line 4" in first_value
    assert (edited / "report.md").read_text().startswith("> **Not the run's table**: ")
    assert "row 3 (line 4" in (edited / "report.md").read_text().splitlines()[0]
    assert "row 3" in refused(capsys, "report", edited)  # still edited: allowed once, not from then on

    (edited / "predictions.csv").write_text("".join([*table[:5], *table[6:]]))  # row 5 deleted
    assert f"{edited}/predictions.csv row 5 is missing (the run wrote" in refused(capsys, "report", edited)

    old = tmp_path / "old"  # a run made before the table was recorded: it loads, with a note
    shutil.copytree(runs / "run", old)
    (old / "predictions.json").unlink()
    capsys.readouterr()
    wpatch.load_run(old)
    assert capsys.readouterr().err.strip() == (
        f"wpatch: note: {old}/predictions.csv cannot be checked for edits: the run kept no record of it "
        "(predictions.json; runs made before it was kept have none)"
    )


def test_a_report_keeps_what_the_run_recorded_and_adds_its_own(runs, tmp_path):
    again = tmp_path / "again"  # cp -r RUN R2; wpatch report R2
    shutil.copytree(runs / "run", again)
    wpatch_command(["report", str(again)])
    before = json.loads((runs / "run" / "summary.json").read_text())
    after = json.loads((again / "summary.json").read_text())
    assert set(before["environment"]) >= {"packages", "device", "seeds", "code_version"}
    assert after["environment"] == before["environment"]
    reanalysed = after.pop("reanalysed")
    assert set(reanalysed) == {"code_version", "time"}
    assert list(after.items()) == list(before.items())  # every part, in its place
    assert (again / "report.md").read_bytes() == (runs / "run" / "report.md").read_bytes()


def test_a_merge_stopped_midway_is_finished_by_merging_again_and_is_never_reported_as_finished(runs, capsys):
    shards, merged = [runs / "s0", runs / "s1"], runs / "merged"
    killed = subprocess.run(
        [sys.executable, "-m", "wpatch", "merge", *map(str, shards), "--out", str(merged)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "WPATCH_FAULT": "tables:SIGKILL"},
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL and (merged / "predictions.csv").exists()
    assert not (merged / "summary.json").exists()
    line = refused(capsys, "report", merged)
    assert f"run folder {merged} holds an unfinished merge (no summary.json); finish it with wpatch merge" in line
    assert not (merged / "summary.json").exists() and not (merged / "report.md").exists()
    wpatch_command(["merge", *map(str, shards), "--out", str(merged)])  # the same merge again: finished
    assert (merged / "summary.json").exists()
    whole = runs / "whole"
    wpatch_command(["merge", *map(str, shards), "--out", str(whole)])
    for name in ("predictions.csv", "predictions.json", "cells.csv", "report.md"):
        assert (merged / name).read_bytes() == (whole / name).read_bytes(), name
    assert "already holds the finished merge" in refused(capsys, "merge", *shards, "--out", merged)
    assert f"{runs / 'run'} is not empty" in refused(capsys, "merge", *shards, "--out", runs / "run")


def test_shards_merged_with_an_edited_table_make_an_edited_run(runs, tmp_path, capsys):
    edited = tmp_path / "s1"
    shutil.copytree(runs / "s1", edited)
    table = lines(edited / "predictions.csv")
    (edited / "predictions.csv").write_text("".join([*table[:2], *table[3:]]))
    merged = tmp_path / "merged"
    assert f"{edited}/predictions.csv row 2 is missing" in refused(
        capsys, "merge", runs / "s0", edited, "--out", merged
    )
    assert not merged.exists()
    wpatch_command(["merge", str(runs / "s0"), str(edited), "--out", str(merged), "--allow-edited"])
    assert next(iter(json.loads((merged / "summary.json").read_text()))) == "edited"
    assert f"{edited}/predictions.csv row 2 is missing" in refused(capsys, "report", merged)  # the merged run too
