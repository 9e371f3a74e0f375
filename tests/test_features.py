"""Phonetic-feature grouping, checked on hand-made pairs and rows whose answers are worked out by hand."""

import math

import pandas as pd
import pytest

from wpatch.analysis.features import changed_features, feature_cells, feature_map, vowel_features
from wpatch.rows import CONDITION

PAIRS = pd.DataFrame(
    [
        ("p1", "consonant", "B", "P", "onset", "voicing"),
        ("p2", "consonant", "T", "K", "coda", "place"),
        ("p3", "vowel", "IY1", "IH1", "nucleus", "vowel quality"),  # tense vs lax
        ("p4", "vowel", "IY", "UW", "nucleus", "vowel quality"),  # front vs back, unrounded vs rounded
        ("p5", "semantic", "", "", "", ""),
        ("p6", "vowel", "AE", "EH", "nucleus", "vowel quality"),  # low vs mid
        ("p7", "vowel", "IY", "EY", "nucleus", "vowel quality"),  # high vs mid
        ("p8", "consonant", "D", "T", "coda", "voicing"),
    ],
    columns=["pair_id", "category", "phoneme_a", "phoneme_b", "position", "feature"],
)


def test_changed_features_from_labels_and_the_vowel_table():
    found = changed_features(PAIRS)
    assert sorted(map(tuple, found.to_numpy().tolist())) == sorted(
        [
            ("p1", "voicing", "onset"),
            ("p2", "place", "coda"),
            ("p3", "length", "nucleus"),
            ("p4", "backness", "nucleus"),
            ("p4", "rounding", "nucleus"),
            ("p6", "height", "nucleus"),
            ("p7", "height", "nucleus"),
            ("p8", "voicing", "coda"),
        ]
    )
    assert vowel_features("AW", "AY") == ["vowel quality"]  # the table tells them apart on nothing
    assert changed_features(PAIRS[["pair_id", "category"]]).empty  # a pairs file without phonetic columns


def rows(values: dict) -> pd.DataFrame:
    """Two layer pairs x two items (directions) per pair: score and effect given per (pair, layer pair)."""
    out = []
    for (pair, s), (score, effect, valid) in values.items():
        for direction in ("a->b", "b->a"):
            out.append(
                {
                    "pair_id": pair,
                    "voice": "v",
                    "site": "block_out",
                    "window": "all",
                    "window_start": 0,
                    "alpha": 1.0,
                    "patch_direction": "denoising",
                    "donor": "source",
                    "source_layer": s,
                    "target_layer": s,
                    "score": score,
                    "effect": effect if valid else math.nan,
                    "effect_valid": valid,
                }
            )
    return pd.DataFrame(out)


def test_feature_cells_means_intervals_and_positions():
    table = rows(
        {
            ("p1", 0): (0.2, 0.5, True),
            ("p8", 0): (0.4, 0.9, False),  # no valid effect: counts for score only
            ("p6", 0): (0.1, 0.2, True),
            ("p7", 0): (0.3, 0.6, True),
            ("p4", 0): (0.7, 1.0, True),
            ("p5", 0): (0.9, 0.9, True),  # semantic: in no feature
        }
    )
    cells = feature_cells(table, changed_features(PAIRS), ["score", "effect"])

    def cell(feature, position, measure):
        mine = cells[(cells.feature == feature) & (cells.position == position) & (cells.measure == measure)]
        assert len(mine) == 1
        return mine.iloc[0]

    assert cell("voicing", "all", "score")["mean"] == pytest.approx(0.3) and cell("voicing", "all", "score").pairs == 2
    assert cell("voicing", "onset", "score")["mean"] == pytest.approx(0.2)
    assert cell("voicing", "coda", "score")["mean"] == pytest.approx(0.4)
    effect = cell("voicing", "all", "effect")
    assert effect["mean"] == pytest.approx(0.5) and effect.pairs == 1 and math.isnan(effect.low)  # p8 left out
    height = cell("height", "all", "effect")
    assert height["mean"] == pytest.approx(0.4) and height.pairs == 2 and 0.2 <= height.low <= height.high <= 0.6
    assert cell("backness", "nucleus", "effect")["mean"] == cell("rounding", "nucleus", "effect")["mean"] == 1.0
    assert not cells.feature.isin(["semantic", ""]).any() and "p5" not in set(cells.get("pair_id", []))
    condition = {"site": "block_out", "window": "all", "alpha": 1.0, "patch_direction": "denoising", "donor": "source"}
    assert feature_map(cells, "height", condition).loc[0, 0] == pytest.approx(0.4)


def test_analyse_writes_feature_tables_figures_and_report(tmp_path):
    """On real rows (the seeded small model's reference run: whole-clip, word-window and sweep conditions), a pairs
    file with phonetic columns gives features.csv, a figure per feature and condition, and a report section."""
    from pathlib import Path

    from wpatch.analysis import analyse, read_rows

    rows = read_rows(Path(__file__).parent / "data/reference_a.csv")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "pair_id,word_a,word_b,category,phoneme_a,phoneme_b,position,feature\n"
        "p00000,bat,pat,consonant,B,P,onset,voicing\np00001,hot,cold,semantic,,,,\n"
    )
    summary = analyse(rows, tmp_path / "run", {"pairs_file": str(pairs)}, tensorboard=False)
    features = pd.read_csv(tmp_path / "run/features.csv")
    assert set(features.feature) == {"voicing"} and set(features.position) == {"onset", "all"}
    assert set(features.window) == set(rows.window) and (features.pairs == 1).all()
    condition = rows[(rows.window == "all") & (rows.site == "block_out")][CONDITION].iloc[0]
    bat = rows[(rows.pair_id == "p00000") & (rows[CONDITION] == condition).all(axis=1)]
    expected = bat[(bat.source_layer == 0) & (bat.target_layer == 1)].score.mean()
    mine = features[(features[CONDITION] == condition).all(axis=1) & (features.measure == "score")]
    mine = mine[mine.position == "onset"]
    assert mine[(mine.source_layer == 0) & (mine.target_layer == 1)]["mean"].item() == pytest.approx(expected)
    voicing = summary["features"]["voicing"]
    sweep = next(v for k, v in voicing.items() if "_sweep_" in k)
    assert voicing["pairs"] == 1 and voicing["positions"] == ["all", "onset"] and "peak_window_start" in sweep
    figures = {p.name for p in (tmp_path / "run/figures").glob("feature_voicing_*.png")}
    assert len(figures) == len(rows[CONDITION].drop_duplicates())
    assert "## Phonetic features" in (tmp_path / "run/report.md").read_text()
    no_features = analyse(rows, tmp_path / "plain", {"pairs_file": None}, tensorboard=False)
    assert "features" not in no_features and not (tmp_path / "plain/features.csv").exists()


def test_a_sweep_of_a_feature_changed_at_onset_and_coda_gets_a_map_per_position(tmp_path):
    from pathlib import Path

    from wpatch.analysis import analyse, read_rows
    from wpatch.analysis.tables import condition_label

    rows = read_rows(Path(__file__).parent / "data/reference_a.csv")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(  # hot/cold labelled as a coda voicing pair, for the test's sake
        "pair_id,word_a,word_b,category,phoneme_a,phoneme_b,position,feature\n"
        "p00000,bat,pat,consonant,B,P,onset,voicing\np00001,hot,cold,consonant,T,D,coda,voicing\n"
    )
    summary = analyse(rows, tmp_path / "run", {"pairs_file": str(pairs)}, tensorboard=False)
    voicing = summary["features"]["voicing"]
    assert voicing["pairs"] == 2 and voicing["positions"] == ["all", "coda", "onset"]
    conditions = rows[CONDITION].drop_duplicates().to_dict("records")
    sweeps = [condition_label(c) for c in conditions if c["window"] == "sweep"]
    assert sweeps and set(voicing["by_position"]) == {"onset", "coda"}
    for position in ("onset", "coda"):
        assert set(voicing["by_position"][position]) == set(sweeps)  # per position: sweeps only
        assert all("peak_window_start" in found for found in voicing["by_position"][position].values())
    figures = {p.name for p in (tmp_path / "run/figures").glob("feature_voicing_*.png")}
    assert len(figures) == len(conditions) + 2 * len(sweeps)
    assert {f"feature_voicing_{position}_{sweeps[0]}.png" for position in ("onset", "coda")} <= figures


def test_a_moved_run_is_reported_again_with_its_features(tmp_path, small_model_path):
    """Everything the analysis needs is in the run's folder: a run moved away from its pairs file (the file gone)
    is reported again (`wpatch report`) with the same phonetic features."""
    import shutil

    from tests.predict_run import main, predict_args
    from wpatch.cli import report

    pairs = (
        "pair_id,word_a,word_b,category,phoneme_a,phoneme_b,position,feature\n"
        "p00000,bat,pat,consonant,B,P,onset,voicing\np00001,hot,cold,semantic,,,,\n"
    )
    (tmp_path / "made").mkdir()
    main(predict_args(tmp_path / "made", small_model_path, pairs=pairs))
    made = (tmp_path / "made/out/features.csv").read_text()
    shutil.move(tmp_path / "made/out", tmp_path / "moved")
    shutil.rmtree(tmp_path / "made")  # the pairs file and the clip cache with it
    (tmp_path / "moved/features.csv").unlink()
    summary = report(str(tmp_path / "moved"))[1]
    assert (tmp_path / "moved/features.csv").read_text() == made and summary["features"]["voicing"]["pairs"] == 1
