"""The analysis apart from the run: one pair summarises cleanly, a computed but unsummarised run is finished
by resume, and `read_rows_and_summary` reads a run back with empty transcripts kept as ""."""

import json
from pathlib import Path

import pandas as pd

from tests.predict_run import main, predict_args
from wpatch.analysis import analyse, read_rows
from wpatch.analysis.tables import read_rows_and_summary

ROOT = Path(__file__).resolve().parents[1]


def args(tmp_path, model, out, *extra):
    """One pair (bat, pat) in both directions, three tokens at most."""
    return predict_args(tmp_path, model, out, "--data.limit", "1", *extra, max_tokens=3)


def test_one_pair_run_summarises_and_an_unsummarised_run_is_finished_by_resume(tmp_path, small_model_path):
    out = tmp_path / "out"
    main(args(tmp_path, small_model_path, out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"]["all"]["items"] == 2
    assert summary["min_separation"] is not None and summary["hparams"]["model"]["min_separation"] is not None
    assert summary["batch_size"] == 2
    rows, loaded = read_rows_and_summary(out)
    assert loaded == summary and len(rows) == len(pd.read_csv(out / "predictions.csv"))

    (out / "summary.json").unlink()  # as if the analysis had crashed after the merge
    main(args(tmp_path, small_model_path, out, "--writer.resume", "true"))
    assert json.loads((out / "summary.json").read_text())["groups"] == summary["groups"]


def test_groups_of_one_item_and_all_nan_effects_summarise(tmp_path, small_model_path):
    out = tmp_path / "out"
    main(args(tmp_path, small_model_path, out))
    rows = read_rows(out / "predictions.csv")
    one = rows[rows["item_id"] == rows["item_id"].min()].assign(effect=float("nan"), effect_valid=False)
    summary = analyse(one, tmp_path / "again", tensorboard=False)
    assert summary["groups"]["all"]["items"] == 1 and (tmp_path / "again" / "summary.json").exists()
    assert all(c.get("effect_pairs", 0) == 0 for c in summary["conditions"].values())


def test_reading_a_run_back_keeps_empty_transcripts(tmp_path):
    frame = pd.DataFrame(
        {
            "item_id": [0, 1],
            "transcript": ["", "NaN"],
            "source_word": ["null", "1"],
            "effect": [float("nan"), 0.5],
            "p_source_language": [float("nan"), float("nan")],
        }
    )
    frame.to_csv(tmp_path / "predictions.csv", index=False)
    rows, summary = read_rows_and_summary(tmp_path)
    assert rows["transcript"].tolist() == ["", "NaN"] and rows["source_word"].tolist() == ["null", "1"]
    assert rows["effect"].isna().tolist() == [True, False] and summary == {}


def test_wpatch_command_predict_report_compare_and_help(tmp_path, small_model_path, capsys):
    import pytest

    from wpatch.cli import main as wpatch

    out = tmp_path / "out"
    wpatch(["predict", *args(tmp_path, small_model_path, out)])
    before = json.loads((out / "summary.json").read_text())
    (out / "cells.csv").unlink()
    wpatch(["report", str(out)])
    after = json.loads((out / "summary.json").read_text())
    assert after["groups"] == before["groups"] and after["min_separation"] == before["min_separation"]
    assert (out / "cells.csv").exists()
    capsys.readouterr()
    wpatch(["compare", str(out), str(out), "--out", str(tmp_path / "same.csv")])
    assert capsys.readouterr().out.count("\n0->0 ") == 1  # the narrow table, a line per cell
    wide = pd.read_csv(tmp_path / "same.csv")  # every measure: a run against itself differs in none
    assert "effect_diff_low" in wide and (wide["score_diff"] == 0).all() and (tmp_path / "same.png").is_file()
    with pytest.raises(SystemExit):
        wpatch(["predict", "--help"])
    help_text = capsys.readouterr().out
    for training in ("max_epochs", "gradient_clip", "--optimizer", "--lr_scheduler", "accumulate_grad"):
        assert training not in help_text
    assert "--trainer.precision" in help_text and "--data.limit" in help_text


def test_predict_without_config_defaults_to_fp32(capsys):
    import pytest

    from wpatch.cli import main as wpatch

    with pytest.raises(SystemExit):
        wpatch(["predict", "--print_config"])
    config = capsys.readouterr().out
    assert "precision: 32-true" in config and "max_epochs" not in config and "optimizer" not in config


def test_python_m_wpatch_and_the_console_entry():
    import subprocess
    import sys

    import tomllib

    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["wpatch"]
    module, function = entry.split(":")
    import importlib

    assert callable(getattr(importlib.import_module(module), function))
    done = subprocess.run([sys.executable, "-m", "wpatch", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "predict" in done.stdout and "compare" in done.stdout


def test_run_says_what_it_found_and_where_and_saves_its_config(tmp_path, small_model_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "wpatch",
            "predict",
            *args(tmp_path, small_model_path, out, "--trainer.enable_progress_bar", "true"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == str(out.resolve())
    assert any(line.startswith("score by source layer") for line in lines)
    assert any(line.startswith("score ") and len(line.split()) == 5 for line in lines)
    noise = done.stdout + done.stderr
    for line in ("Seed set", "GPU available", "TPU available", "Tip", "LeafSpec", "Total length of"):
        assert line not in noise
    # progress counts items and rows with the rate (Lightning's bar counted batches: 0/1 for the whole run)
    rows = len(read_rows(out / "predictions.csv"))
    assert "2/2 items" in done.stderr and f"{rows} rows, " in done.stderr and " rows/s" in done.stderr
    assert "Predicting DataLoader" not in done.stderr + done.stdout
    config = (out / "config.yaml").read_text()
    assert "min_separation" in config and "precision: 32-true" in config
    environment = json.loads((out / "summary.json").read_text())["environment"]
    assert environment["packages"]["torch"] and environment["batch_size"] == 2 and environment["device"]


def test_figures_share_a_fixed_labelled_scale_per_measure_and_readable_titles():
    from wpatch.analysis.figures import condition_title, group_title, heatmap
    from wpatch.rows import SCALES as RANGES

    small = pd.DataFrame([[0.2, 0.3], [0.25, -0.0001]], index=[0, 1], columns=[0, 1])
    large = pd.DataFrame([[2.5, -3.0], [0.5, 0.9]], index=[0, 1], columns=[0, 1])
    for measure in ("score", "override", "effect"):
        limits = set()
        for matrix in (small, large):
            figure = heatmap(matrix, "t", measure=measure)
            cells, bar = figure.axes[0].collections[0], figure.axes[1]
            limits.add(cells.get_clim())
            assert bar.get_ylabel()  # a labelled colour bar
            texts = [t.get_text() for t in figure.axes[0].texts]
            assert "-0.00" not in texts and "-.00" not in texts and ".00" in " ".join(texts)
        assert limits == {RANGES[measure]}  # the data do not move the scale, so figures compare by colour
    assert RANGES["effect"] == (-1.0, 1.0) and RANGES["score"] == (0.0, 1.0)
    assert heatmap(large, "t", measure="effect").axes[0].collections[0].colorbar.extend == "both"
    assert group_title("all", 1) == "all items (1 item)"
    assert group_title("category=vowel|recognised", 12) == "vowel pairs, recognised only (12 items)"
    title = condition_title(
        {"site": "block_out", "window": "all", "alpha": 1.0, "patch_direction": "denoising"} | {"donor": "source"}
    )
    assert title == "block_out, whole clip, alpha 1, denoising, donor: source word" and "_a1_" not in title


def test_compare_matches_word_windows_that_start_where_each_clip_s_word_does():
    """A `word` window starts at each clip's word (a word alone at frame 5, in a sentence at frame 30): the same
    cell in both runs. Sweep windows are still told apart by their start."""
    from wpatch.analysis.compare import shared_part

    def rows(word_start):
        base = {"site": "block_out", "alpha": 1.0, "patch_direction": "denoising", "donor": "source"}
        item = {"pair_id": "p0", "direction": "a->b", "source_word": "bat", "target_word": "pat", "voice": "hibari"}
        return pd.DataFrame(
            [
                {**base, **item, "window": "word", "window_start": word_start, "source_layer": 0, "target_layer": 0},
                {**base, **item, "window": "sweep", "window_start": 20, "source_layer": 0, "target_layer": 0},
            ]
        )

    a, b, differences = shared_part(rows(5), rows(30))
    assert len(a) == len(b) == 2 and differences == []
    other_sweep = rows(30).assign(window_start=[30, 40])
    a, b, differences = shared_part(rows(5), other_sweep)
    assert len(a) == len(b) == 1 and any("sweep window starts" in line for line in differences)
