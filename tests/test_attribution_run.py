"""`wpatch predict --model.method atp` end to end on the small model: attributions.csv and .npz, real patching
beside the estimate (a stated sample, and the top cells), the validation table, figures, summary and report, and
the encoder lens; and the settings it refuses."""

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest

from tests.predict_run import main, predict_args

COLUMNS = [  # attributions.csv's columns as the docs list them, written out independently of the code
    "item_id",
    "pair_id",
    "direction",
    "category",
    "voice",
    "source_word",
    "target_word",
    "patch_direction",
    "site",
    "layer",
    "window",
    "window_start",
    "window_end",
    "frames",
    "ld_source_clean",
    "ld_target_clean",
    "estimate",
    "estimate_effect",
    "graddrop",
    "patched",
    "patched_effect",
    "checked",
]
SAMPLE, TOP = 6, 3
QK_RUN = ("--model.method", "atp", "--model.directions", "[denoising, noising]", "--model.atp_window", "10")
QK_RUN += ("--model.min_separation", "0")


@pytest.fixture(scope="module")
def atp_run(tmp_path_factory, small_model_path):
    folder = tmp_path_factory.mktemp("atp")
    args = predict_args(
        folder,
        small_model_path,
        None,
        "--model.method",
        "atp",
        "--model.directions",
        "[denoising, noising]",
        "--model.validate",
        "true",
        "--model.validate_sample",
        str(SAMPLE),
        "--model.verify_top",
        str(TOP),
        "--model.atp_window",
        "10",
        "--model.min_separation",
        "0",
        "--model.graddrop",
        "true",
    )
    main(args)
    return folder / "out"


@pytest.fixture(scope="module")
def qk_run(tmp_path_factory, small_model_path):
    """The map of `atp_run` (same items, patch directions and windows) with AtP*'s QK fix, nothing else; its
    progress bar's output in stderr.txt."""
    folder = tmp_path_factory.mktemp("qk")
    bar = ("--trainer.enable_progress_bar", "true")
    with contextlib.redirect_stderr(io.StringIO()) as stderr:
        main(predict_args(folder, small_model_path, None, *QK_RUN, "--model.qk_fix", "true", *bar))
    (folder / "stderr.txt").write_text(stderr.getvalue())
    return folder


def test_qk_fix_run(qk_run, atp_run, small_model_path, capsys):
    """`--model.qk_fix true`: the same rows as without; the estimates differ where a later self-attention reads
    the patch and are AtP's to the bit where none does (attn_out, mlp_out, block_out of the last block); the
    setting is in run.json, and a resume without it is refused naming it."""
    key = ["item_id", "patch_direction", "site", "layer", "window"]
    fixed = pd.read_csv(qk_run / "out" / "attributions.csv")
    plain = pd.read_csv(atp_run / "attributions.csv")
    assert list(fixed.columns) == COLUMNS and len(fixed) == len(plain)
    fixed, plain = fixed.set_index(key), plain.set_index(key)
    assert sorted(fixed.index) == sorted(plain.index)
    plain = plain.loc[fixed.index]
    last = (fixed.index.get_level_values("layer") == 2) & (fixed.index.get_level_values("site") != "resid_pre")
    assert (fixed["estimate"][last] == plain["estimate"][last]).all()
    assert (fixed["estimate"][~last] != plain["estimate"][~last]).mean() > 0.9
    assert json.loads((qk_run / "out" / "run.json").read_text())["settings"]["qk_fix"] is True
    (qk_run / "out" / "summary.json").unlink()  # unfinished again, so that it may be resumed
    with pytest.raises(SystemExit) as exit_info:
        main(predict_args(qk_run, small_model_path, None, *QK_RUN, "--writer.resume", "true"))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "qk_fix=True, not False" in err[-1], err


def test_attributions_table_and_arrays(atp_run):
    table = pd.read_csv(atp_run / "attributions.csv", keep_default_na=False, na_values=[""])
    assert list(table.columns) == COLUMNS
    rows = pd.read_csv(atp_run / "predictions.csv")
    # 1 pair x 2 directions (items) x 2 patch directions x 4 sites x 3 blocks, every window once
    assert set(table["item_id"]) == set(rows["item_id"]) and table["site"].nunique() == 4
    assert not table.duplicated(["item_id", "patch_direction", "site", "layer", "window"]).any()
    per_map = table.groupby(["item_id", "patch_direction", "site", "layer"])
    assert len(per_map) == 2 * 2 * 4 * 3 and (per_map["frames"].sum() == 1500).all()
    assert (table["graddrop"] >= 0).all()  # a mean of absolute values, on every cell
    # the clean runs' logit differences are the ones predictions.csv has for the same items
    clean = rows.groupby("item_id")[["ld_source_clean", "ld_target_clean"]].first()
    mine = table.groupby("item_id")[["ld_source_clean", "ld_target_clean"]].first()
    assert np.allclose(mine.to_numpy(), clean.loc[mine.index].to_numpy(), atol=1e-3)
    # the per-frame arrays sum to each window's estimate
    arrays = np.load(atp_run / "attributions.npz")
    sites = list(arrays["sites"])
    for row in table.sample(20, random_state=0).itertuples():
        frames = arrays[f"{row.item_id}/{row.patch_direction}"][sites.index(row.site), row.layer]
        inside = frames[row.window_start : row.window_end].sum()
        speech = table[(table.item_id == row.item_id) & (table.window != "rest")]
        a, b = speech["window_start"].min(), speech["window_end"].max()
        expected = frames.sum() - frames[a:b].sum() if row.window == "rest" else inside
        assert row.estimate == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_real_patching_beside_the_estimate(atp_run):
    table = pd.read_csv(atp_run / "attributions.csv", keep_default_na=False, na_values=[""])
    for _, cells in table.groupby(["item_id", "patch_direction"]):
        assert (cells["checked"] == "validate").sum() == SAMPLE
        top = cells["estimate"].abs().nlargest(TOP).index
        assert cells.loc[top, "checked"].isin(["validate", "verify"]).all()
        assert cells["patched"].notna().sum() == cells["checked"].notna().sum()  # "" (not patched) reads as NaN
    summary = json.loads((atp_run / "summary.json").read_text())
    validation = summary["atp_validation"]
    assert set(validation) == set(table["site"])
    for site, found in validation.items():
        layers = table[(table["site"] == site) & table["checked"].notna()]["layer"]
        assert set(found) == {"trusted", "all", *map(str, layers)}
        assert {"cells", "spearman", "top10_recall", "mae_effect", "mae_nats", "sign_agreement"} <= set(found["all"])
        assert (atp_run / "figures" / f"atp_validation_{site}.png").exists()
    checked = pd.read_csv(atp_run / "atp_validation.csv")
    assert checked[checked["layer"] == "all"]["cells"].sum() == table["checked"].notna().sum()
    report = (atp_run / "report.md").read_text()
    assert "## Attribution patching (AtP)" in report and "## Encoder lens" in report


def test_the_map_is_drawn_without_validation(qk_run):
    """An atp run patching nothing for real (no --model.validate) draws its map too: per site and patch
    direction, blocks x frames up to the last speech frame, the mean over items of attributions.npz's arrays;
    report.md shows each. Its progress bar counts predictions.csv's rows, not the batch's parts."""
    from wpatch.analysis.attribution import frame_maps

    out = qk_run / "out"
    table = pd.read_csv(out / "attributions.csv", keep_default_na=False, na_values=[""])
    with np.load(out / "attributions.npz") as saved:
        sites, arrays = list(saved["sites"]), {key: saved[key] for key in saved.files if key != "sites"}
    end = table.loc[table["window"] != "rest", "window_end"].max()
    report = (out / "report.md").read_text()
    maps = frame_maps(out)
    directions = ["denoising", "noising"]
    assert set(maps) == {(site, d) for site in table["site"].unique() for d in directions}
    assert "No cell was patched for real" in report and len(maps) == report.count("](figures/atp_map_")
    for (site, direction), frames in maps.items():
        items = [array for key, array in arrays.items() if key.endswith("/" + direction)]
        assert len(items) == table["item_id"].nunique()
        expected = sum(array[sites.index(site), :, :end].astype(np.float64) for array in items) / len(items)
        assert frames.shape == (table["layer"].nunique(), end)
        np.testing.assert_allclose(frames.to_numpy(), expected, rtol=1e-12, atol=0)
        path = f"figures/atp_map_{site}_{direction}.png"
        assert (out / path).is_file() and f"]({path})" in report
    rows = len(pd.read_csv(out / "predictions.csv"))
    assert f"{rows} rows, " in (qk_run / "stderr.txt").read_text()


def test_encoder_lens(atp_run):
    """Lens block l = the whole-block rows (s = l, t = last): block 2 (the last) is the clean source run."""
    lens = pd.read_csv(atp_run / "lens.csv")
    rows = pd.read_csv(atp_run / "predictions.csv")
    assert sorted(lens[lens["group"] == "all"]["block"]) == [0, 1, 2]
    last = lens[(lens["group"] == "all") & (lens["block"] == 2)].iloc[0]
    diagonal = rows[
        (rows["source_layer"] == 2) & (rows["target_layer"] == 2) & (rows["patch_direction"] == "denoising")
    ]
    assert last["logp_word"] == pytest.approx(diagonal["logp_source"].mean(), abs=1e-6)
    assert (atp_run / "figures" / "encoder_lens.png").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model.validate", "true"], "add --model.method atp"),
        (["--model.qk_fix", "true"], "--model.qk_fix need an attribution map; add --model.method atp"),
        (["--model.method", "atp", "--model.atp_window", "0"], "atp_window 0"),
    ],
)
def test_refused_settings(tmp_path, small_model_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(predict_args(tmp_path, small_model_path, None, *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out" / "predictions.csv").exists()
