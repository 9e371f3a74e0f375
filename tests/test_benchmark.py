"""`wpatch benchmark` runs its three modes on the same rows and agrees with the original-decode baseline, and needs
no checkout of the repository."""

import os
import subprocess
import sys
from pathlib import Path

from wpatch.benchmark import arguments, main

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_modes_agree_on_transcripts(tmp_path, small_model_path, monkeypatch, capsys):
    monkeypatch.setenv("WPATCH_CACHE", str(tmp_path))
    report = main(
        [
            "--model",
            small_model_path,
            "--limit",
            "2",
            "--baseline-rows",
            "4",
            "--original-rows",
            "2",
            "--profile",
            "--json-out",
            str(tmp_path / "b.json"),
        ]
    )
    assert set(report["modes"]) == {"wpatch", "original", "original-decode"}
    assert report["rows"] == 4 * 9 and report["modes"]["original"]["rows_timed"] == 2
    assert report["identical_transcripts_vs_original_decode"] == "4/4"
    assert all(mode["rows_per_s"] > 0 for mode in report["modes"].values())
    captured = capsys.readouterr()
    printed = captured.out
    assert "wpatch.encoder.clean" in printed and "original-decode" in printed
    # progress while it runs, one line as each mode starts and ends (it was silent until the end)
    assert captured.err.count("[benchmark") >= 7 and "rows/s" in captured.err
    # the modes are interleaved in rounds, each on its own items, in a rotating order (they ran one after another)
    rounds = [line.split("] round ")[1].split(":")[0] for line in captured.err.splitlines() if "] round " in line]
    assert {"1/3, wpatch", "2/3, wpatch", "3/3, wpatch", "1/3, original-decode", "3/3, original-decode"} <= set(rounds)
    # modes in a rotating order: original, original-decode, wpatch in round 1; wpatch first in round 3
    assert rounds.index("1/3, original-decode") < rounds.index("1/3, wpatch")
    assert rounds.index("3/3, wpatch") < rounds.index("3/3, original-decode")
    assert report["modes"]["wpatch"]["rows_returned"] == report["rows"]
    # `original` (model.transcribe per row, minutes for a few rows) on a small sample by default; not timed here:
    # on the random test model transcribe runs to its 224-token cap at every temperature
    assert arguments().parse_args([]).original_rows <= 8 < arguments().parse_args([]).baseline_rows


def test_wpatch_benchmark_runs_without_a_checkout(tmp_path):
    """`wpatch benchmark` is the package's own (`wpatch.benchmark`): it answers where the repository's scripts folder
    cannot be imported (an installed wpatch, run from another folder)."""
    code = "import sys; sys.modules['scripts'] = None; from wpatch.cli import main; main(['benchmark', '--help'])"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: wpatch benchmark") and "--baseline-rows" in done.stdout
