"""scripts/layer_profiles.py: the asymmetry against values built to give a known difference, and a real run's
diagonal and off-diagonal means against the run's own summary.json."""

import json

import numpy as np
import pandas as pd
import pytest

from scripts.layer_profiles import asymmetry, cell_sets, section
from tests.predict_run import main as predict
from tests.predict_run import predict_args
from wpatch.analysis.stats import pooled_interval
from wpatch.analysis.tables import read_rows


def test_the_asymmetry_is_each_pairs_later_into_earlier_minus_the_reverse():
    """Two layers, three pairs: s > t scores 0.9 + the pair's offset, s < t 0.6 + the same offset, so every pair's
    difference, their mean and its whole interval are 0.3 whatever the offsets."""
    offsets = {"p0": 0.0, "p1": 0.05, "p2": -0.1}
    rows = pd.DataFrame(
        [
            {"pair_id": pair, "voice": "v", "source_layer": s, "target_layer": t, "score": base + offset}
            for pair, offset in offsets.items()
            for s, t, base in ((1, 0, 0.9), (0, 1, 0.6), (0, 0, 0.99), (1, 1, 0.99))
        ]
    )
    assert asymmetry(rows, "score") == "+0.300 [+0.300, +0.300]"
    rows.loc[(rows.pair_id == "p2") & (rows.source_layer == 1) & (rows.target_layer == 0), "score"] = 0.2
    assert asymmetry(rows, "score").startswith(f"{np.mean([0.3, 0.3, 0.2 - (0.6 - 0.1)]):+.3f}")


def test_a_runs_diagonal_and_off_diagonal_means_agree_with_its_summary(tmp_path, small_model_path):
    """The script's cell sets and pooled means against the means the run wrote into summary.json, at full
    precision: a random model's cells differ only in the fourth decimal."""
    out = tmp_path / "run"
    predict(predict_args(tmp_path, small_model_path, out, pairs="word_a,word_b\nbat,pat\nsit,set\ncold,gold\n"))
    summary = json.loads((out / "summary.json").read_text())["groups"]["all"]
    rows = read_rows(out / "predictions.csv")
    everything, diagonal, off = cell_sets(rows, all_cells=True)
    assert len(everything) == len(rows) == len(diagonal) + len(off) and len(diagonal) == 6 * 3  # items x blocks
    for part, key in ((diagonal, "diagonal_mean"), (off, "off_diagonal_mean")):
        mean, low, high, pairs = pooled_interval(part, "score")
        assert mean == pytest.approx(summary["score"][key], rel=1e-9) and low <= mean <= high and pairs == 3
    table = section(out, ("score",), all_cells=True)
    assert next(line for line in table if line.startswith("| all | 6 |"))
