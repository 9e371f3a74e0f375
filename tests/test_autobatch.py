"""Automatic batch size: the arithmetic and the CPU fallback (the GPU probe: tests/test_gpu.py)."""

from pathlib import Path

import lightning as L
import pytest
from whisper.model import ModelDimensions

from datamodules import PairDataModule
from tests.predict_run import main
from wpatch.errors import WpatchError
from wpatch.patching.autobatch import DEFAULT_BATCH, decode_chunk_for, fit_batch
from wpatch.patching.module import PatchingModule

TINY = ModelDimensions(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=384,
    n_audio_head=6,
    n_audio_layer=4,
    n_vocab=51864,
    n_text_ctx=448,
    n_text_state=384,
    n_text_head=6,
    n_text_layer=4,
)
GIB = 2**30


def test_batch_is_the_largest_whose_extrapolated_peak_fits():
    # 1 GiB fixed (weights, decoder chunk) + 0.25 GiB per source clip
    peaks = {2: int(1.5 * GIB), 4: 2 * GIB}
    assert fit_batch(peaks, 11 * GIB, n_groups=10_000) == 40
    assert fit_batch(peaks, 11 * GIB - 1, n_groups=10_000) == 39
    assert fit_batch(peaks, 11 * GIB, n_groups=25) == 25  # never more clips than the data has
    assert fit_batch(peaks, GIB, n_groups=25) == 1  # nothing fits: one clip at a time, not zero


def test_decode_chunk_from_model_dimensions():
    per_output = 4 * 4 * 1500 * 384 * 4  # cross-attention keys and values of tiny's 4 decoder layers, fp32, x2
    assert decode_chunk_for(TINY, 100 * per_output, share=0.5) == 50
    assert (
        decode_chunk_for(TINY, 16 * GIB) == int(0.15 * 16 * GIB // per_output) >= 64
    )  # a 16 GB GPU keeps the default chunk
    assert decode_chunk_for(TINY, 10**15) == 1024 and decode_chunk_for(TINY, 0) == 1


def test_bad_batch_size_is_refused():
    with pytest.raises(WpatchError, match="not a positive number of clips or auto"):
        PairDataModule(batch_size=0)


def test_auto_on_the_cpu_is_the_default(tmp_path, small_model_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("word_a,word_b\nbat,pat\nhot,cold\n")
    dm = PairDataModule(
        pairs_file=str(csv), model=small_model_path, tts="espeak", cache_dir=str(tmp_path / "clips"), batch_size="auto"
    )
    module = PatchingModule(model=small_model_path, decode_chunk=5)
    rows = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).predict(module, datamodule=dm)
    assert dm.resolved_batch_size == DEFAULT_BATCH and module.hparams.decode_chunk == 5
    assert len(rows) == 1 and len(rows[0]) == 4 * 9  # the 4 source clips in one batch


def test_cli_takes_auto_and_refuses_other_words(capsys):
    config = str(Path(__file__).resolve().parents[1] / "configs/experiment_a.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", config, "--data.batch_size", "auto", "--print_config"])
    assert exit_info.value.code == 0 and "batch_size: auto" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", config, "--data.batch_size", "huge", "--print_config"])
    assert exit_info.value.code == 2 and "data.batch_size" in capsys.readouterr().err
