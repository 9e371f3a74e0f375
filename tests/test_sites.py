"""Patching sites, windows, interpolation and directions: invariants and agreement with plain hooks."""

import ast
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import random_whisper
from tests.predict_run import main, predict_args
from tests.reference import reference_patched_run
from tests.test_pipeline import run
from wpatch.errors import WpatchError
from wpatch.patching.attribution_qk import reader
from wpatch.patching.encoder import (
    Patch,
    fast_patched_run,
    fast_whole_block_outputs,
    site_module,
    site_patch,
    site_states,
    window_weights,
)
from wpatch.patching.module import PatchingModule
from wpatch.sites import SITES as REGISTRY
from wpatch.sites import Hook, Site, sites_table

ROOT = Path(__file__).resolve().parents[1]
SITES = [name for name, site in REGISTRY.items() if site.stack == "encoder" and site.whisper]  # Whisper's


@pytest.fixture(scope="module")
def model():
    return random_whisper(seed=5)


@pytest.fixture(scope="module")
def runs(model):
    torch.manual_seed(0)
    recipient, donor = torch.randn(2, 80, 3000), torch.randn(2, 80, 3000)
    return recipient, site_states(model.encoder, recipient, set(SITES)), site_states(model.encoder, donor, set(SITES))


@pytest.mark.parametrize("site", SITES)
def test_every_site_and_window_agrees_with_a_plain_hook(model, runs, site):
    recipient_mel, (rec, _), (don, _) = runs
    for s in range(3):
        for t in range(3):
            patches = [Patch(site, s, t, 100, 140, 0.7), Patch(site, s, t, 0, 1500, 1.0)]
            weight = window_weights(patches, 1500)
            fast = fast_patched_run(model.encoder, rec["resid_pre"][t], t, site, don[site][s], weight)
            reference = reference_patched_run(model.encoder, recipient_mel, t, site, don[site][s], weight)
            assert (fast - reference).abs().max() < 1e-5, (site, s, t)


@pytest.mark.parametrize("site", SITES)
def test_alpha_zero_and_self_patching_change_nothing(model, runs, site):
    _, (rec, clean), _ = runs
    for t in range(3):
        nothing = window_weights([Patch(site, 1, t, 0, 1500, 0.0)] * 2, 1500)
        assert torch.equal(fast_patched_run(model.encoder, rec["resid_pre"][t], t, site, rec[site][1], nothing), clean)
        itself = window_weights([Patch(site, t, t, 0, 1500, 1.0)] * 2, 1500)
        assert (
            fast_patched_run(model.encoder, rec["resid_pre"][t], t, site, rec[site][t], itself) - clean
        ).abs().max() < 1e-5


def test_full_window_block_output_equals_the_original_whole_block_patch(model, runs):
    _, (rec, _), (don, don_clean) = runs
    whole, slot = fast_whole_block_outputs(model.encoder, don["block_out"], don_clean, [(2, 0)])
    everything = window_weights([Patch("block_out", 2, 0, 0, 1500, 1.0)] * 2, 1500)
    windowed = fast_patched_run(model.encoder, rec["resid_pre"][0], 0, "block_out", don["block_out"][2], everything)
    assert (windowed - whole[:, slot[(2, 0)]]).abs().max() < 1e-5


def test_attention_plus_mlp_plus_input_equals_the_block_output_patch(model, runs):
    recipient_mel, _, (don, _) = runs
    ones = torch.ones(2, 1500, 1)
    t = 1
    block = model.encoder.blocks[t]
    with (
        site_patch(block, "resid_pre", don["resid_pre"][t], ones),
        site_patch(block, "attn_out", don["attn_out"][t], ones),
        site_patch(block, "mlp_out", don["mlp_out"][t], ones),
    ):
        combined = model.encoder(recipient_mel)
    block_out = reference_patched_run(model.encoder, recipient_mel, t, "block_out", don["block_out"][t], ones)
    assert (combined - block_out).abs().max() < 1e-5


def test_bad_patch_settings_are_refused(small_model_path):
    for kwargs, message in [
        ({"sites": ["mlp"]}, "unknown patch site 'mlp'"),
        ({"windows": [[10, 5]]}, "window \\[10, 5\\]"),
        ({"alphas": [1.5]}, "alpha 1.5 is outside"),
        ({"directions": ["sideways"]}, "unknown patch direction"),
        ({"max_tokens": 0}, "max_tokens 0 is outside 1..224"),
        ({"decode_chunk": 0}, "decode_chunk 0 decodes nothing"),
    ]:
        with pytest.raises(WpatchError, match=message):
            PatchingModule(model=small_model_path, **kwargs)


def test_one_run_sweeps_sites_windows_alphas_directions_and_control(tmp_path, small_model_path):
    out = tmp_path / "sweep"
    main(
        run(
            tmp_path,
            small_model_path,
            out,
            "--model.sites",
            "[block_out, mlp_out]",
            "--model.windows",
            "[all, word, [0, 10]]",
            "--model.alphas",
            "[0.0, 1.0]",
            "--model.directions",
            "[denoising, noising]",
            "--model.control",
            "true",
            "--model.sweep",
            "[10, 10, 30]",
            "--model.min_separation=-1e9",
            pairs="word_a,word_b,category\nbat,pat,consonant\nhot,cold,semantic\n",
        )
    )
    rows = pd.read_csv(
        out / "predictions.csv", keep_default_na=False, na_values={"effect": [""], "p_source_language": [""]}
    )
    per_item = (
        2 * (9 * 3 * 2 + 3 * 3 * 2) * 2 * 2
    )  # sites x (pairs x windows x alphas + same-layer pairs x 3 sweep starts x alphas) x directions x donors
    assert len(rows) == 4 * per_item
    assert set(rows.site) == {"block_out", "mlp_out"} and set(rows.patch_direction) == {"denoising", "noising"}
    assert set(rows.donor) == {"source", "target", "control"} and set(rows.window) == {"all", "word", "0-10", "sweep"}
    word = rows[rows.window == "word"]
    assert (word.window_start < word.window_end).all() and (word.window_end <= 40).all()
    # alpha 0 leaves the recipient's clean run: the target's when denoising, the source's when noising
    zero = rows[rows.alpha == 0.0]
    ld = zero.logp_source - zero.logp_target
    denoising = zero.patch_direction == "denoising"
    assert ((ld - zero.ld_target_clean)[denoising].abs() < 1e-4).all() and (
        (ld - zero.ld_source_clean)[~denoising].abs() < 1e-4
    ).all()
    clean_target = (
        rows[
            (rows.window == "all")
            & (rows.site == "block_out")
            & (rows.alpha == 1)
            & (rows.patch_direction == "noising")
            & (rows.donor == "target")
            & (rows.source_layer == rows.target_layer)
        ]
        .groupby("item_id")
        .transcript.first()
    )
    assert (zero[denoising].groupby("item_id").transcript.agg(set).map(len) == 1).all()
    assert zero[denoising].groupby("item_id").transcript.first().equals(clean_target)
    # the effect is defined on every row here (min_separation -1e9); it reads 0 where the patched run is the target
    # clip's clean run and 1 where it is the source clip's: alpha 0 leaves the recipient's clean run (the target's
    # when denoising, the source's when noising), and a whole-block diagonal patch from the source is its clean run
    assert rows.effect_valid.all()
    separated = (rows.ld_source_clean - rows.ld_target_clean).abs() > 1e-3  # else last-bit noise is amplified
    source_diagonal = (
        (rows.window == "all")
        & (rows.site == "block_out")
        & (rows.alpha == 1)
        & (rows.donor == "source")
        & (rows.patch_direction == "denoising")
        & (rows.source_layer == rows.target_layer)
    )
    cases = [
        ((rows.alpha == 0) & (rows.patch_direction == "denoising"), 0.0),
        ((rows.alpha == 0) & (rows.patch_direction == "noising"), 1.0),
        (source_diagonal, 1.0),
    ]
    for chosen, expected in cases:
        assert (chosen & separated).sum() >= 4
        assert ((rows.effect[chosen & separated] - expected).abs() < 1e-2).all()
    cells = pd.read_csv(out / "cells.csv")
    valid = cells.dropna(subset=["effect_low"])
    assert ((valid.effect_low <= valid.effect + 1e-9) & (valid.effect <= valid.effect_high + 1e-9)).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["primary_condition"] == {
        "site": "block_out",
        "window": "all",
        "alpha": 0.0,
        "patch_direction": "denoising",
        "donor": "source",
    }
    assert any(name.startswith("sweep_map_") for name in (p.name for p in (out / "figures").iterdir()))
    assert {"block_out_all_a1_denoising_control", "mlp_out_word_a0.5_noising_target"} - set(summary["conditions"]) == {
        "mlp_out_word_a0.5_noising_target"
    }
    assert (
        len(summary["conditions"]) == 2 * 4 * 2 * 2 * 2
    )  # sites x windows (incl. sweep) x alphas x directions x donors
    figures = out / "figures"
    assert (figures / "effect_matrix_mlp_out_word_a1_noising_target.png").exists()
    assert (figures / "sweep_map_block_out_sweep_a1_denoising_control.png").exists()


def test_the_readme_site_table_is_current():
    """README.md's site table is made from the registry (WPATCH_WRITE_DOCS=1 rewrites it)."""
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- sites-table -->\n", "<!-- /sites-table -->"
    assert start in readme and end in readme, "README.md has no <!-- sites-table --> block"
    before, rest = readme.split(start)
    after = rest[rest.index(end) :]
    current = before + start + sites_table() + after
    if os.environ.get("WPATCH_WRITE_DOCS"):
        (ROOT / "README.md").write_text(current)
    assert readme == current, "README.md's site table is out of date: rerun this test with WPATCH_WRITE_DOCS=1"


def test_site_names_are_written_only_in_the_registry():
    """No module but wpatch/sites.py spells a site's name as a string: every rule about sites reads the registry."""
    for path in [*ROOT.glob("wpatch/**/*.py"), *ROOT.glob("datamodules/**/*.py"), *ROOT.glob("scripts/*.py")]:
        if path.name == "sites.py":
            continue
        literals = {
            node.value
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        assert not literals & set(REGISTRY), f"{path.relative_to(ROOT)} spells {sorted(literals & set(REGISTRY))}"


def test_a_hook_kind_outside_hook_or_its_stack_is_refused_when_the_site_is_made():
    """A hook is a `Hook` of its site's stack: a string (the old way, where an unknown one fell through to the
    attention's output) or a decoder kind on an encoder site is refused in one line."""
    with pytest.raises(WpatchError, match=r"^site attn_in: hook 'attn_ln' is not a hook kind of the encoder"):
        Site("attn_in", "encoder", "frames", True, "attn_ln", "donor", "the attention's input")
    with pytest.raises(WpatchError, match=r"^site mixed: hook <Hook.DEC_MLP: 'MLP output'> is not a hook kind of"):
        Site("mixed", "encoder", "frames", True, Hook.DEC_MLP, "donor", "?")


def test_the_qk_fix_refuses_a_site_whose_hook_kind_it_does_not_handle(monkeypatch, tmp_path, small_model_path, capsys):
    """A new `attn_in` site (hook kind ATTN_LN) patches exactly, but the QK fix has no rule for it: a map with it is
    refused with `--model.qk_fix` in one line, before any folder is made (it used to be corrected as if it were the
    attention's output: `reader("attn_in", 1)` gave block 2, not block 1)."""
    attn_in = Site("attn_in", "encoder", "frames", True, Hook.ATTN_LN, "donor clip's encoder", "the attention's input")
    monkeypatch.setitem(REGISTRY, "attn_in", attn_in)
    block = random_whisper(seed=5).encoder.blocks[0]
    assert site_module(block, "attn_in") is block.attn_ln
    with pytest.raises(KeyError):
        reader("attn_in", 1)  # no rule: no block, rather than a wrong one
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as refused:
        main(predict_args(tmp_path, small_model_path, out, "--model.method", "atp", "--model.qk_fix", "true"))
    err = capsys.readouterr().err.strip().splitlines()
    assert refused.value.code == 2 and len(err) == 1 and not out.exists()
    assert err[0] == (
        "wpatch: error: --model.qk_fix cannot correct the attribution map's site attn_in (hook kind ATTN_LN): it "
        "handles INPUT, OUTPUT, ATTN, MLP; run the map without --model.qk_fix"
    )


def test_hook_kinds_are_never_compared_with_strings():
    """Every rule about a hook kind reads `wpatch.sites.Hook`: no module compares a `hook` with a string."""
    for path in [*ROOT.glob("wpatch/**/*.py"), *ROOT.glob("datamodules/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                hooks = any(isinstance(s, (ast.Attribute, ast.Name)) and "hook" in ast.unparse(s) for s in sides)
                strings = any(
                    isinstance(c, ast.Constant) and isinstance(c.value, str) for s in sides for c in ast.walk(s)
                )
                assert not (hooks and strings), f"{path.relative_to(ROOT)}: {ast.unparse(node)}"
