"""On a CUDA GPU: the fast path equals the hook path in fp32, mixed precision runs, the writer's rows are complete,
and the automatic batch fits, log-mels load into pinned memory. Skipped without CUDA (run by
scripts/device_check.py on a GPU machine)."""

import math

import lightning as L
import pandas as pd
import pytest
import torch

from datamodules import PairDataModule
from tests.conftest import random_whisper
from tests.test_patching import assert_fast_path_equals_hooks, mels_of
from wpatch.patching.autobatch import SHARE, largest_groups, peak_memory
from wpatch.patching.module import PatchingModule
from wpatch.rows import ROW_COLUMNS
from wpatch.run_folder.writer import PatchingResultsWriter

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
PAIRS = "word_a,word_b,category\nbat,pat,consonant\nhot,cold,semantic\nship,sheep,vowel\n"
MIXED = "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"


@pytest.fixture
def pairs(tmp_path, clip_dir, small_model_path, monkeypatch):
    """A datamodule of three pairs (both directions) on the small random model, for a given batch size."""
    monkeypatch.setenv("WPATCH_CACHE", str(tmp_path / "cache"))
    csv = tmp_path / "pairs.csv"
    csv.write_text(PAIRS)
    return lambda batch_size=4: PairDataModule(
        pairs_file=str(csv), model=small_model_path, tts="espeak", cache_dir=clip_dir, batch_size=batch_size
    )


def predict(dm, precision: str, accelerator: str = "gpu", callbacks=(), **settings):
    """Every row of a predict run on `dm`'s model (module `settings` as given), and the module."""
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        logger=False,
        enable_progress_bar=False,
        callbacks=list(callbacks),
    )
    module = PatchingModule(model=dm.hparams.model, **settings)
    rows = [row for batch in trainer.predict(module, datamodule=dm) for row in batch]
    return sorted(rows, key=lambda r: (r["item_id"], r["site"], r["source_layer"], r["target_layer"])), module


def assert_rows_agree(a: list[dict], b: list[dict]) -> None:
    """Same rows; word log-probabilities within 1e-3; greedy transcripts identical on at least 95% of rows
    (a random model's near-tied logits can flip under the last-bit differences of another device or batch shape)."""
    assert [(r["item_id"], r["site"], r["source_layer"], r["target_layer"]) for r in a] == [
        (r["item_id"], r["site"], r["source_layer"], r["target_layer"]) for r in b
    ]
    assert max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in ("logp_source", "logp_target")) < 1e-3
    assert sum(x["transcript"] == y["transcript"] for x, y in zip(a, b)) >= 0.95 * len(a)


def test_fast_path_equals_hook_path_on_cuda_fp32(clip_dir):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    model = random_whisper().cuda()
    assert_fast_path_equals_hooks(
        model, mels_of(["bat", "hot"], clip_dir).cuda(), mels_of(["pat", "cold"], clip_dir).cuda()
    )


def test_gpu_rows_agree_with_cpu_rows_in_fp32(pairs):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    gpu, _ = predict(pairs(), "32-true")
    cpu, _ = predict(pairs(), "32-true", accelerator="cpu")
    assert len(gpu) == len(cpu) == 6 * 9
    assert_rows_agree(gpu, cpu)


def test_decoder_sites_on_gpu_agree_with_cpu_and_run_in_mixed_precision(pairs):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    settings = {"sites": ["dec_resid", "dec_cross_out", "enc_to_dec"], "source_layers": [0, 1], "target_layers": [0, 1]}
    gpu, _ = predict(pairs(), "32-true", **settings)
    cpu, _ = predict(pairs(), "32-true", accelerator="cpu", **settings)
    assert len(gpu) == len(cpu) == 6 * (2 * 4 + 2)
    assert_rows_agree(gpu, cpu)
    mixed, _ = predict(pairs(), MIXED, **settings)
    assert len(mixed) == len(gpu) and all(math.isfinite(r["logp_source"]) and 0 <= r["score"] <= 1 for r in mixed)


def test_mixed_precision_run_completes(pairs):
    rows, _ = predict(pairs(), MIXED)
    assert len(rows) == 6 * 9 and len({(r["item_id"], r["source_layer"], r["target_layer"]) for r in rows}) == 54
    assert all(0.0 <= r["score"] <= 1.0 and r["transcript"] is not None for r in rows)


def test_writer_rows_are_complete_on_gpu(pairs, tmp_path):
    out = tmp_path / "run"
    predict(pairs(batch_size=2), MIXED, callbacks=[PatchingResultsWriter(output_dir=str(out))])
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(table.columns) == ROW_COLUMNS and len(table) == 6 * 9
    assert not table.duplicated(["item_id", "source_layer", "target_layer"]).any()
    assert (out / "summary.json").is_file()


def test_auto_batch_fits_and_gives_the_same_rows(pairs):
    fixed, _ = predict(pairs(), "32-true")
    dm = pairs(batch_size="auto")
    auto, module = predict(dm, "32-true")
    assert (
        dm.resolved_batch_size == len(dm.groups) and module.hparams.decode_chunk >= 64
    )  # a few clips: all in one batch
    assert_rows_agree(auto, fixed)
    free, _ = torch.cuda.mem_get_info()
    assert peak_memory(module.cuda(), dm, largest_groups(dm, dm.resolved_batch_size), "32-true") <= SHARE * (
        free + torch.cuda.memory_reserved()
    )


def test_log_mels_load_into_pinned_memory(pairs):
    dm = pairs()
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert dm.mels[[0, 1]].is_pinned() and batch["source"].mel.is_pinned()
