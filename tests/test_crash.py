"""Crash safety. A small run is killed (SIGKILL) at points taken from its own phases: during clip synthesis, between
parts, inside the merge, while its TensorBoard file is written, between the tables and the report, between the
report and the finish mark (summary.json, written last) and after it. Each is resumed; every table (every CSV,
summary.json but for timing and environment, report.md, report.html and clips/) must then be byte for byte the
uninterrupted run's, with one TensorBoard file and nothing half-written left. A part damaged on disk (cut short, a
byte flipped, emptied, or without its record) is computed again, alone, with a warning that names it. The runs
signal themselves at named points (WPATCH_FAULT, `wpatch.run_folder.folder.fault_point`)."""

import json
import shutil
import signal
from pathlib import Path

import pytest

from tests.predict_run import main
from tests.test_runs import args, parts, script

VOLATILE = ("wall_time_s", "environment", "clip_cache")  # how long, where and with what cache: not results


def summary_without_volatile(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    summary["hparams"]["data"].pop("cache_dir")  # where the clips are cached, not what they are
    return {key: value for key, value in summary.items() if key not in VOLATILE}


def assert_same_run(out: Path, reference: Path) -> None:
    """Every table of `out` byte for byte the reference's; one TensorBoard file; nothing half-written."""
    tables = sorted(p.name for p in reference.glob("*.csv"))
    assert tables == sorted(p.name for p in out.glob("*.csv")) and "predictions.csv" in tables
    for name in [*tables, "report.md"]:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert summary_without_volatile(out) == summary_without_volatile(reference)
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        p.name for p in (reference / "figures").iterdir()
    )
    assert len(list((out / "tensorboard").iterdir())) == 1
    page = {run: (run / "report.html").read_text().replace(run.name, "RUN") for run in (out, reference)}
    assert page[out] == page[reference]
    assert sorted(p.name for p in (out / "clips").iterdir()) == sorted(p.name for p in (reference / "clips").iterdir())
    assert parts(out) == parts(reference)
    assert not [p for p in out.rglob("*") if ".partial" in p.name]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_model_path):
    """An uninterrupted run (its clips cached in `<base>/clips`, shared by the killed runs)."""
    base = tmp_path_factory.mktemp("crash")
    main(args(base, small_model_path, base / "reference"))
    return base, base / "reference"


POINTS = {  # fault point -> what a kill there leaves (checked before the resume)
    "synthesis1": "the first clip made, no part",
    "part2": "two parts",
    "merging": "predictions.csv half-written",
    "tensorboard": "a TensorBoard file half-written",
    "tables": "every table, no report",
    "report": "the report, no finish mark",
    "finished": "a finished run",
}


@pytest.mark.parametrize("point", POINTS)
def test_killed_in_any_phase_then_resumed_gives_the_same_tables(reference, small_model_path, point, capsys):
    base, expected = reference
    out = base / f"killed-{point}"
    clips = ["--data.cache_dir", str(base / "fresh-clips")] if point.startswith("synthesis") else []
    killed = script(args(base, small_model_path, out, *clips), fault=f"{point}:SIGKILL")
    assert killed.wait(timeout=300) == -signal.SIGKILL, killed.stderr.read()[-2000:]
    killed.stderr.close()
    finished = (out / "summary.json").exists()
    assert finished == (point == "finished")
    if point == "synthesis1":
        assert len(list((base / "fresh-clips").rglob("*.wav"))) == 1 and not parts(out)
    elif point == "part2":
        assert len(parts(out)) == 2
    elif point == "merging":
        assert not (out / "predictions.csv").exists() and list(out.glob(".predictions.csv.*.partial"))
    elif point == "tensorboard":
        assert [p for p in out.rglob("events.out.tfevents.*")]  # the file TensorBoard started
    elif point in ("report", "finished"):
        assert (out / "report.md").exists()
    resume = args(base, small_model_path, out, *clips, "--writer.resume", "true")
    if finished:
        with pytest.raises(SystemExit) as refused:
            main(resume)
        assert refused.value.code == 2 and "already holds a finished run" in capsys.readouterr().err
    else:
        main(resume)
    assert_same_run(out, expected)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-20])


def flip_a_byte(path: Path) -> None:
    """A digit in the middle of the file changed: the part still reads as a table, with one wrong number."""
    data = bytearray(path.read_bytes())
    middle = next(i for i in range(len(data) // 2, len(data)) if chr(data[i]).isdigit() and data[i] != ord("9"))
    data[middle] += 1
    path.write_bytes(bytes(data))


def empty(path: Path) -> None:
    path.write_bytes(b"")


def unrecord(path: Path) -> None:
    path.with_suffix(".json").unlink()  # as if killed between the part and its record


@pytest.mark.parametrize("damage", [truncate, flip_a_byte, empty, unrecord], ids=lambda f: f.__name__)
def test_a_damaged_part_is_computed_again_alone(reference, small_model_path, damage, capsys):
    base, expected = reference
    out = base / f"damaged-{damage.__name__}"
    shutil.copytree(expected, out)
    (out / "summary.json").unlink()  # every part written, the run not finished (as if killed in the report phase)
    damaged = out / "parts" / parts(out)[2]
    damage(damaged)
    batch = damaged.stem.rsplit("-", 1)[1]  # its batch's other parts (heard-<batch>.csv) are written again too
    kept = {p: p.stat().st_mtime_ns for p in (out / "parts").iterdir() if p.stem.rsplit("-", 1)[1] != batch}
    main(args(base, small_model_path, out, "--writer.resume", "true"))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(damaged) in warnings[0] and "computing its items again" in warnings[0]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the other parts untouched
    assert json.loads((out / "run.json").read_text())["sessions"][-1]["items_done"] == 3
    assert_same_run(out, expected)
