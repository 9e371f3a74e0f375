"""Runs on models of different depth compared at relative depth (`wpatch compare`, `depth_profiles`)."""

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import SMALL_DIMS, random_whisper, save_checkpoint
from tests.predict_run import main, predict_args
from wpatch.analysis import depth_profiles
from wpatch.analysis.depth import PROFILES
from wpatch.cli import main as wpatch


@pytest.fixture(scope="module")
def runs(tmp_path_factory, clip_dir) -> list[Path]:
    """Two small runs on random models of 3 and 5 encoder blocks, the same two pairs."""
    outs = []
    for depth in (3, 5):
        folder = tmp_path_factory.mktemp(f"depth{depth}")
        model = save_checkpoint(random_whisper(dataclasses.replace(SMALL_DIMS, n_audio_layer=depth)), folder / "m.pt")
        pairs = "word_a,word_b\nbat,pat\nship,chip\n"
        main(predict_args(folder, model, None, "--data.cache_dir", clip_dir, pairs=pairs, max_tokens=2))
        outs.append(folder / "out")
    return outs


def test_profiles_on_relative_depth(runs):
    table = depth_profiles(runs, measure="score")
    for run, depth in zip(runs, (3, 5)):
        mine = table[table["run"] == str(run)]
        assert set(mine["depth"]) == {depth}
        assert set(mine["profile"]) == set(PROFILES)
        assert np.allclose(mine["relative_depth"], mine["layer"] / (depth - 1))
        assert mine["relative_depth"].min() == 0 and mine["relative_depth"].max() == 1
        assert (mine["low"] <= mine["mean"] + 1e-12).all() and (mine["mean"] <= mine["high"] + 1e-12).all()
        rows = pd.read_csv(run / "predictions.csv")
        for profile, part, column in (
            (PROFILES[0], rows[rows.source_layer == rows.target_layer], "source_layer"),
            (PROFILES[2], rows[rows.source_layer != rows.target_layer], "target_layer"),
        ):
            expected = part.groupby([column, "pair_id"])["score"].mean().groupby(level=0).mean()
            got = mine[mine["profile"] == profile].set_index("layer")["mean"]
            assert np.allclose(got.sort_index().to_numpy(), expected.to_numpy())
        assert "custom d=64.en" in table.attrs["models"][str(run)]


def test_compare_command_places_runs_on_relative_depth(runs, tmp_path, capsys):
    wpatch(["compare", str(runs[0]), str(runs[1]), "--out", str(tmp_path / "depth.csv")])
    err = capsys.readouterr().err
    assert "differ in depth (3 encoder and 5 encoder blocks)" in err and "relative depth, layer / (depth - 1)" in err
    assert "openai-whisper checkpoint" in err
    assert (tmp_path / "depth.png").stat().st_size > 10_000
    table = pd.read_csv(tmp_path / "depth.csv")
    assert set(table["depth"]) == {3, 5}
    summary = (runs[0] / "report.md").read_text()
    assert "| model card | Whisper custom d=64.en (3 encoder / 2 decoder blocks), openai-whisper checkpoint" in summary
