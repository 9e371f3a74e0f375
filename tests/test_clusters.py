"""Shards (`--data.shard I/N`) and `wpatch merge`: two shards merged equal the whole run byte for byte (rows, tables,
figures, report; to float32 rounding where the CPU's kernels are not batch-invariant: tests/same_rows.py), with the
whole run's item ids and control donors; a gap, an overlap, a settings difference or an unfinished shard is one line
naming the shard; under SLURM, Lightning's auto-requeue is off (a run continues with --writer.resume true instead)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from datamodules.shards import parse_shard, shard_of
from tests.predict_run import main, predict_args
from tests.same_rows import assert_close_values, assert_same_table, batch_invariant_kernels, tolerance
from wpatch.cli import main as wpatch
from wpatch.errors import WpatchError

PAIRS = "word_a,word_b\nbat,pat\nhot,cold\nsun,moon\n"  # 6 items on 6 source clips
SAME_BYTES = ["predictions.csv", "cells.csv", "matrices.csv", "report.md"]
PER_RUN = ("wall_time_s", "clip_cache", "environment")  # summary.json parts that differ between any two runs


def args(tmp_path, model, out, *extra, batch_size=2):
    """Three pairs, layers 0 and 2, three tokens at most, real and control donors."""
    layers = ["--model.source_layers", "[0, 2]", "--model.target_layers", "[0, 2]", "--model.control", "true"]
    return predict_args(tmp_path, model, out, *layers, *extra, pairs=PAIRS, batch_size=batch_size, max_tokens=3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_model_path):
    """The whole run, and its two shards (the second with another batch size)."""
    tmp_path = tmp_path_factory.mktemp("shards")
    main(args(tmp_path, small_model_path, tmp_path / "whole"))
    main(args(tmp_path, small_model_path, tmp_path / "s0", "--data.shard", "0/2"))
    main(args(tmp_path, small_model_path, tmp_path / "s1", "--data.shard", "1/2", batch_size=1))
    return tmp_path


def test_two_shards_merged_equal_the_whole_run_byte_for_byte(runs, capsys):
    whole, merged = runs / "whole", runs / "merged"
    items = [set(pd.read_csv(runs / s / "predictions.csv")["item_id"]) for s in ("s0", "s1")]
    assert items[0] and items[1] and not items[0] & items[1] and items[0] | items[1] == set(range(6))
    wpatch(["merge", str(runs / "s1"), str(runs / "s0"), "--out", str(merged)])  # in any order
    assert capsys.readouterr().out.startswith("2 shards merged: 6 items")
    tables = (merged / "predictions.csv", whole / "predictions.csv")
    for name in SAME_BYTES + sorted(p.relative_to(whole).as_posix() for p in (whole / "figures").iterdir()):
        if name.endswith(".csv"):
            assert_same_table(merged / name, whole / name, logps_of=tables)
        elif batch_invariant_kernels():  # else drawn and printed from numbers equal to float32 rounding
            assert (merged / name).read_bytes() == (whole / name).read_bytes(), name
    summaries = [json.loads((folder / "summary.json").read_text()) for folder in (whole, merged)]
    kept = [{k: v for k, v in s.items() if k not in PER_RUN} for s in summaries]
    allowed = 0.0 if batch_invariant_kernels() else tolerance(*(pd.read_csv(t) for t in tables))
    assert_close_values(kept[1], kept[0], allowed)
    assert list(summaries[0]) == list(summaries[1])  # the same parts in the same order
    assert (
        json.loads((merged / "run.json").read_text())["settings"]
        == json.loads((whole / "run.json").read_text())["settings"]
    )
    wpatch(["report", str(merged)])  # a merged run is a run
    assert_same_table(merged / "cells.csv", whole / "cells.csv", logps_of=tables)


ATP = ["--model.method", "atp", "--model.validate", "true", "--model.validate_sample", "4", "--model.verify_top", "2"]
# the map's numbers when its passes differ (another batch, another run): float32 sums of products over frames and
# width, ordered otherwise; measured 7.5e-9 at |estimate| up to 0.074 (1e-7 of the scale), allowed 1e-5 of the scale
MAP_TOLERANCE = 1e-5
# M of a clean or a patched run and the effect read from it: log-probability differences
M_COLUMNS = ["ld_source_clean", "ld_target_clean", "patched", "patched_effect"]
NUMBERS = ["spearman", "top10_recall", "mae_effect", "mae_nats", "sign_agreement"]
MEAN_ERRORS = ["mae_effect", "mae_nats"]


def test_shards_of_an_attribution_map_run_merged_equal_the_whole_run(tmp_path, small_model_path, capsys):
    """`--model.method atp` (the map, real patching of a sample beside it, the validation): shards merged equal one
    run, whether the whole run is in batches of one clip or in one batch. predictions.csv byte for byte, every
    non-numeric column of attributions.csv equal, the map's numbers (which depend on the gradient passes in their
    last float32 bits) within MAP_TOLERANCE of its largest estimate, and the validation figures the same way."""
    merged = tmp_path / "merged"
    for shard in ("0/2", "1/2"):
        main(args(tmp_path, small_model_path, tmp_path / f"s{shard[0]}", *ATP, "--data.shard", shard, batch_size=1))
    wpatch(["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(merged)])
    assert "figures/atp_validation_block_out.png" in {p.relative_to(merged).as_posix() for p in merged.rglob("*.png")}
    shards = [pd.read_csv(tmp_path / s / "attributions.csv")["item_id"] for s in ("s0", "s1")]
    assert set(shards[0]) and set(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(6))
    for batch_size in (1, 6):  # one source clip per batch; the whole run in one batch (a pair's directions share)
        whole = tmp_path / f"whole{batch_size}"
        main(args(tmp_path, small_model_path, whole, *ATP, batch_size=batch_size))
        assert_same_table(merged / "predictions.csv", whole / "predictions.csv")
        a, b = (pd.read_csv(f / "attributions.csv", keep_default_na=False, na_values=[""]) for f in (merged, whole))
        numbers = [c for c in a.columns if a[c].dtype.kind == "f"]
        assert "estimate" in numbers and a.drop(columns=numbers).equals(b.drop(columns=numbers))
        allowed = MAP_TOLERANCE * a[numbers].abs().max().fillna(0)  # per column: the estimates' own scales
        logps = tolerance(*(pd.read_csv(f / "predictions.csv") for f in (merged, whole)))
        allowed[M_COLUMNS] = logps  # M (clean or patched) rounds in units of the log-probabilities it is made of
        assert ((a[numbers] - b[numbers]).abs().fillna(0) <= allowed).all().all()
        assert (a[numbers].isna() == b[numbers].isna()).all().all()
        with np.load(merged / "attributions.npz") as x, np.load(whole / "attributions.npz") as y:
            assert x.files == y.files and (x["sites"] == y["sites"]).all()
            for key in (k for k in x.files if k != "sites"):
                assert np.abs(x[key] - y[key]).max() <= allowed["estimate"], key
        validation = [pd.read_csv(f / "atp_validation.csv") for f in (merged, whole)]
        assert validation[0].drop(columns=NUMBERS).equals(validation[1].drop(columns=NUMBERS))
        ranks = ["spearman", "top10_recall", "sign_agreement"]
        assert np.allclose(validation[0][ranks], validation[1][ranks], rtol=1e-4, atol=1e-6, equal_nan=True)
        errors = (validation[0][MEAN_ERRORS] - validation[1][MEAN_ERRORS]).abs().fillna(0)
        assert (errors <= logps + allowed["estimate"]).all().all()  # means of |estimate - patched|

    lost = tmp_path / "lost"  # a shard whose map is gone: refused before anything is written
    shutil.copytree(tmp_path / "s1", lost)
    (lost / "attributions.npz").unlink()
    capsys.readouterr()
    line = problem(capsys, tmp_path / "s0", lost, "--out", tmp_path / "refused")
    assert f"shard {lost} has no attributions.npz (the other shards have an attribution map)" in line
    assert not (tmp_path / "refused").exists()


def problem(capsys, *arguments) -> str:
    with pytest.raises(SystemExit) as refused:
        wpatch(["merge", *map(str, arguments)])
    err = capsys.readouterr().err.strip().splitlines()
    assert refused.value.code == 2 and len(err) == 1, err
    return err[0]


def test_a_gap_an_overlap_other_settings_or_an_unfinished_shard_is_one_line(runs, capsys):
    s0, s1, out = runs / "s0", runs / "s1", runs / "refused"
    assert "shard 1/2 is missing (a gap: 1 of 2 shards given)" in problem(capsys, s0, "--out", out)
    assert f"shards {s0} and {s0} are both shard 0/2 (an overlap)" in problem(capsys, s0, s0, "--out", out)
    other = runs / "other"
    shutil.copytree(s1, other)
    run = json.loads((other / "run.json").read_text())
    run["settings"]["min_separation"] = 2.0
    (other / "run.json").write_text(json.dumps(run))
    line = problem(capsys, s0, other, "--out", out)
    assert f"shard {other} differs from {s0} in min_separation: 2.0, not 1.0" in line
    (other / "summary.json").unlink()
    assert f"shard {other} is not finished (no summary.json)" in problem(capsys, s0, other, "--out", out)
    assert f"{runs / 'whole'} is not a shard" in problem(capsys, s0, runs / "whole", "--out", out)
    assert not out.exists()  # nothing written


def test_shards_are_balanced_by_source_clip_and_do_not_depend_on_each_other():
    clips = [0, 0, 0, 1, 1, 2, 3, 4, 5, 5]  # items per source clip: 3, 2, 1, 1, 1, 2
    items = pd.DataFrame({"source_clip": clips})
    shards = [shard_of(items, i, 3) for i in range(3)]
    assert sum(s.astype(int) for s in shards).eq(1).all()  # every item in exactly one shard
    assert sorted(int(s.sum()) for s in shards) == [3, 3, 4]  # clip 0 (3) alone; 5+1 and 1+2+1 share the rest
    for shard in shards:  # a source clip's items stay together
        assert (
            items[shard].groupby("source_clip").size().to_dict()
            == items[items["source_clip"].isin(items[shard]["source_clip"])].groupby("source_clip").size().to_dict()
        )
    assert parse_shard("3/8") == (3, 8) and parse_shard(None) is None
    for bad in ("8/8", "a/2", "1", "-1/2"):
        with pytest.raises(WpatchError, match="is not I/N with 0 <= I < N"):
            parse_shard(bad)


def test_under_slurm_lightnings_auto_requeue_is_off(monkeypatch):
    from wpatch.cli import patching_trainer

    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "wpatch", "SLURM_NODELIST": "node1", "SLURM_PROCID": "0"}
    for name, value in {**slurm, "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_ID": "7"}.items():
        monkeypatch.setenv(name, value)
    trainer = patching_trainer(accelerator="cpu", devices=1, enable_progress_bar=False)
    environment = trainer._accelerator_connector.cluster_environment  # what the strategy would use
    assert type(environment).__name__ == "SLURMEnvironment" and environment.auto_requeue is False
