"""scripts/layer_profiles.py: the asymmetry against values built to give a known difference, and a real run's
diagonal and off-diagonal means against the run's own summary.json."""

import json

import numpy as np
import pandas as pd
import pytest

from scripts.layer_profiles import asymmetry, section
from tests.predict_run import main as predict
from tests.predict_run import predict_args


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


def test_a_runs_tables_agree_with_its_summary(tmp_path, small_model_path):
    out = tmp_path / "run"
    pairs = "word_a,word_b\nbat,pat\nsit,set\ncold,gold\n"
    predict(predict_args(tmp_path, small_model_path, out, pairs=pairs))
    summary = json.loads((out / "summary.json").read_text())["groups"]["all"]
    lines = section(out, ("score", "effect"), all_cells=True)
    head = next(line for line in lines if line.startswith("| group |")).strip("|").split("|")
    row = next(line for line in lines if line.startswith("| all |")).strip("|").split("|")
    cells = dict(zip([cell.strip() for cell in head], [cell.strip() for cell in row]))
    assert cells["items"] == str(summary["items"]) == "6"
    for measure in ("score", "effect"):
        for part, key in (("diagonal", "diagonal_mean"), ("off-diagonal", "off_diagonal_mean")):
            mean, interval = cells[f"{measure} {part}"].split(" ", 1)
            low, high = (float(x) for x in interval.strip("[]").split(","))
            assert float(mean) == pytest.approx(summary[measure][key], abs=5e-4)  # printed to 3 decimals
            assert low <= float(mean) + 5e-4 and float(mean) - 5e-4 <= high
