"""The device check's CPU dry run (what CI runs), and its refusal of damaged or missing weight parts."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts.device_check import LIMIT, restore, stage
from scripts.device_checks import ATP_SAMPLE, write_huggingface
from tests.conftest import random_whisper
from wpatch.models.huggingface import name_map
from wpatch.models.loading import load_model

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_packs_a_bundle_that_fits_and_runs_the_check_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/device_check.py"), "dry-run", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    carried = {load: float(mib) for load, mib in re.findall(r"(load [12]) carries ([\d.]+) MiB", done.stdout)}
    assert set(carried) == {"load 1", "load 2"} and max(carried.values()) * 2**20 <= LIMIT
    report = json.loads((out / "report.json").read_text())
    assert {c["check"] for c in report["checks"]} >= {
        "weights",
        "clips",
        "rows 32-true",
        "fp32 vs original-decode",
        "huggingface checkpoint",
        "atp validated run",
        "atp map time",
        "gpu tests",
    }
    assert all(c["ok"] for c in report["checks"]) and report["benchmark"]["rows"] == 2 * 2 * 16
    hf, atp = report["huggingface"], report["atp"]
    assert hf["weights_equal"] and hf["rows"] == 2 * 16 and hf["max_abs_difference"] <= hf["tolerance"]
    assert atp["maps"] == atp["maps_expected"] == 2 * 4 * 4 and atp["sampled_per_item"] == [ATP_SAMPLE]
    assert report["atp_timing"]["items"] == 2 and report["atp_timing"]["atp_seconds_per_item"] > 0
    summary = (out / "summary.md").read_text()
    assert "| weights | PASS |" in summary and "| wpatch 32-true |" in summary and summary in done.stdout


def test_the_checks_huggingface_folder_is_what_transformers_reads(tmp_path):
    """The check writes its Hugging Face-format checkpoint without transformers (the GPU machine may lack it):
    transformers' own `from_pretrained` reads it as the same model, and wpatch reads it back bit for bit."""
    transformers = pytest.importorskip("transformers")
    model = random_whisper()
    folder = write_huggingface(model, tmp_path / "hf")
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    theirs, ours = hf.state_dict(), model.state_dict()
    for key, name in name_map(model.dims.n_audio_layer, model.dims.n_text_layer).items():
        assert torch.equal(theirs[f"model.{name}"], ours[key]), key
    assert torch.equal(hf.proj_out.weight, ours["decoder.token_embedding.weight"])  # tied
    heads = model.alignment_heads.to_dense().nonzero().tolist()
    assert heads and hf.generation_config.alignment_heads == heads
    back = load_model(str(folder))
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ours.items())
    assert torch.equal(back.alignment_heads.to_dense(), model.alignment_heads.to_dense())


def parts(tmp_path, data: bytes):
    """A bundle whose model.bin is `data`, split in two, and a machine folder."""
    half = len(data) // 2
    manifest = {
        "model_bin_sha256": hashlib.sha256(data).hexdigest(),
        "model_bin_bytes": len(data),
        "part1_sha256": hashlib.sha256(data[:half]).hexdigest(),
        "config": {"alignment_heads": [[1, 2]]},
    }
    for part, chunk in (("part1", data[:half]), ("part2", data[half:])):
        (tmp_path / "bundle" / part).mkdir(parents=True)
        (tmp_path / "bundle" / part / f"model.bin.{part}").write_bytes(chunk)
        (tmp_path / "bundle" / part / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path / "bundle", tmp_path / "machine"


def test_parts_join_exactly(tmp_path):
    data = bytes(range(256)) * 40 + b"x"
    bundle, machine = parts(tmp_path, data)
    stage(bundle, machine)
    digest = restore(machine / "stage" / "model.bin.part1", bundle / "part2", tmp_path / "model")
    assert (tmp_path / "model" / "model.bin").read_bytes() == data and digest == hashlib.sha256(data).hexdigest()
    assert json.loads((tmp_path / "model" / "config.json").read_text()) == {"alignment_heads": [[1, 2]]}


def test_damaged_or_missing_parts_are_refused_with_one_line(tmp_path, capsys):
    bundle, machine = parts(tmp_path, b"0123456789" * 100)
    (bundle / "part1" / "model.bin.part1").write_bytes(b"1" * 500)
    with pytest.raises(SystemExit) as exit_info:
        stage(bundle, machine)
    assert exit_info.value.code == 2 and "part 1 of model.bin arrived damaged" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        restore(machine / "stage" / "model.bin.part1", bundle / "part2", tmp_path / "model")
    assert "it was not staged, or was removed between the two loads" in capsys.readouterr().err
    (machine / "stage").mkdir(parents=True)
    (machine / "stage" / "model.bin.part1").write_bytes(b"1" * 500)
    with pytest.raises(SystemExit):
        restore(machine / "stage" / "model.bin.part1", bundle / "part2", tmp_path / "model")
    err = capsys.readouterr().err.strip()
    assert "the joined model.bin has sha256" in err and err.count("\n") == 0


def test_pack_refuses_loads_over_the_transfer_limit_it_is_given(tmp_path, monkeypatch, capsys):
    """The transfer limit is a parameter (`--transfer-limit`, MiB): a load over it is refused, naming the limit."""
    import scripts.device_check as device_check

    monkeypatch.setattr(device_check, "download_wheels", lambda target, python: target.mkdir(parents=True))
    with pytest.raises(SystemExit) as refused:
        device_check.main(["pack", "--bundle", str(tmp_path / "bundle"), "--transfer-limit", "20"])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert re.fullmatch(
        r"device_check: load 1 would carry [\d.]+ MiB, over the 20 MiB one transfer may carry \(--transfer-limit\); "
        r"shrink the checkout or the bundle\n",
        err,
    ), err
