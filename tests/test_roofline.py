"""The roofline's arithmetic: each phase's FLOPs counted from the model's dimensions (`wpatch.flops`) equal what
`torch.utils.flop_counter` counts while the harness's own code runs on a small random Whisper (attention on the
math kernel, whose matrix products the counter sees), and the rates and shares are the counts over the times."""

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from whisper.tokenizer import get_tokenizer

from tests.conftest import random_whisper
from wpatch.flops import (
    AttentionWork,
    CleanEncoderWork,
    CrossKeysValuesWork,
    EncoderBlocksWork,
    GreedyWork,
    MlpWork,
    ScoringWork,
    matmul,
)
from wpatch.patching.decoding import cross_attention_cache, greedy_transcripts, sequence_logprobs
from wpatch.patching.encoder import fast_whole_block_outputs, layer_pairs, site_states
from wpatch.roofline import NominalPeak, Roofline, cpu_peak, gpu_peak, measure
from wpatch.sites import BLOCK_OUT, RESID_PRE


def counted(run) -> int:
    """FLOPs of `run()` by torch's own counter."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def model():
    return random_whisper().eval()


def test_phase_flops_equal_torchs_flop_counter(model):
    dims, encoder, n = model.dims, model.encoder, 2
    mels = torch.randn(n, dims.n_mels, 2 * dims.n_audio_ctx, generator=torch.Generator().manual_seed(0))
    assert counted(lambda: encoder(mels)) == CleanEncoderWork(dims, n).flops
    states, clean = site_states(encoder, mels, {BLOCK_OUT.name, RESID_PRE.name})
    pairs = layer_pairs(dims.n_audio_layer)  # 3 blocks: t=0 runs 2 blocks after it for 2 donors, t=1 one for 2
    assert counted(lambda: fast_whole_block_outputs(encoder, states[BLOCK_OUT.name], clean, pairs)) == (
        EncoderBlocksWork(dims, n, 2 * 2 + 2 * 1).flops
    )
    block, x, d, ctx = encoder.blocks[0], states[RESID_PRE.name][0], dims.n_audio_state, dims.n_audio_ctx
    assert counted(lambda: block.attn(block.attn_ln(x))) == AttentionWork(d, ctx, ctx, n).flops
    assert counted(lambda: block.mlp(block.mlp_ln(x))) == MlpWork(d, n * ctx).flops
    features = torch.randn(3, ctx, d)
    assert counted(lambda: cross_attention_cache(model, features)) == CrossKeysValuesWork(dims, 3).flops
    cross = cross_attention_cache(model, features)
    for steps in (1, 3):  # the random model never ends a transcript early: every step runs
        prefix = len(get_tokenizer(False).sot_sequence_including_notimestamps)
        flops = counted(lambda: greedy_transcripts(model, cross, "en", max_tokens=steps))
        assert flops == GreedyWork(dims, 3, prefix, steps).flops
    tokenizer = get_tokenizer(False)
    start = list(tokenizer.sot_sequence_including_notimestamps)
    asked = [[(start, [262]), (start, [300, 301, 302])]] * 3  # padded to the longer: 5 positions, 4 scored each
    flops = counted(lambda: sequence_logprobs(model, cross, asked))
    assert flops == ScoringWork(dims, 3, 2, len(start) + 3, 3 * 4).flops


def test_counts_by_hand():
    """tiny.en's encoder block on one clip of 1500 frames, by hand: 24 T d^2 + 4 T^2 d."""
    from whisper.model import ModelDimensions

    tiny = ModelDimensions(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)
    assert EncoderBlocksWork(tiny, 1, 1).flops == 24 * 1500 * 384**2 + 4 * 1500**2 * 384  # 8.77 GFLOP
    assert CrossKeysValuesWork(tiny, 1).flops == 4 * 2 * 2 * 1500 * 384**2  # 3.54 GFLOP


def test_nominal_peaks():
    info = {"flags": "fma avx2 avx512f avx512_bf16 amx_bf16", "cpu MHz": "2600.0"}
    assert cpu_peak(torch.float32, 2, info).flops_per_s == pytest.approx(2 * 64 * 2.6e9)
    assert cpu_peak(torch.bfloat16, 2, info).flops_per_s == pytest.approx(2 * 1024 * 2.6e9)
    no_amx = {"flags": "fma avx2 avx512f avx512_bf16", "cpu MHz": "2600.0"}
    assert cpu_peak(torch.bfloat16, 2, no_amx).flops_per_s == pytest.approx(2 * 128 * 2.6e9)
    assert cpu_peak(torch.float32, 2, {"flags": "fma avx2", "cpu MHz": "2450"}).flops_per_s == pytest.approx(
        2 * 32 * 2.45e9
    )
    assert cpu_peak(torch.float32, 2, {"flags": "sse2", "cpu MHz": "2450"}).flops_per_s is None
    assert gpu_peak("NVIDIA H100 80GB HBM3", torch.bfloat16, False).flops_per_s == 989.4e12
    assert gpu_peak("NVIDIA H100 PCIe", torch.float32, False).flops_per_s == 51.2e12
    assert gpu_peak("NVIDIA H200", torch.float32, True).flops_per_s == 494.7e12
    assert gpu_peak("Tesla T4", torch.bfloat16, False).flops_per_s is None


def test_measure_prints_every_phase_with_its_shares(model):
    mels = torch.randn(2, model.dims.n_mels, 3000, generator=torch.Generator().manual_seed(1))
    roofline = measure(model, mels, "en", max_tokens=2, repeats=1)
    names = [p.phase.strip() for p in roofline.phases]
    assert names == [
        "clean encoder",
        "patched encoder blocks",
        "attention (block 0)",
        "MLP (block 0)",
        "cross-attention keys/values",
        "greedy decoding",
        "teacher-forced scoring",
    ]
    assert roofline.phases[0].flops == CleanEncoderWork(model.dims, 2).flops
    lines = roofline.lines()
    assert sum("% of peak" in line for line in lines) == len(names)
    for phase, line in zip(roofline.phases, lines[2:]):
        rate = phase.flops / phase.seconds
        assert f"{rate / 1e9:.1f}" in line and f"{100 * rate / roofline.matmul_flops_per_s:.1f}%" in line
        if roofline.peak.flops_per_s:
            assert f"{100 * rate / roofline.peak.flops_per_s:.1f}% of peak" in line
    assert isinstance(roofline.peak, NominalPeak) and roofline.as_dict()["phases"][0]["gflops_per_s"] > 0
    assert Roofline.from_dict(json.loads(json.dumps(roofline.as_dict()))) == roofline  # as the benchmark's JSON


def test_a_disturbed_ceiling_timing_is_replaced_by_the_second(model, monkeypatch):
    """The matmul ceiling is timed before and after the phases; a first timing 1000x too slow must not stand."""
    import wpatch.roofline

    times, timed = [], wpatch.roofline.best_seconds

    def first_disturbed(run, device, repeats):
        seconds, result = timed(run, device, repeats)
        times.append(seconds)
        return seconds * (1000 if len(times) == 1 else 1), result

    monkeypatch.setattr(wpatch.roofline, "best_seconds", first_disturbed)
    mels = torch.randn(2, model.dims.n_mels, 3000, generator=torch.Generator().manual_seed(2))
    roofline = measure(model, mels, "en", max_tokens=1, repeats=1)
    d = model.dims.n_audio_state
    assert roofline.matmul_flops_per_s == matmul(2 * model.dims.n_audio_ctx, d, 4 * d) / times[-1]


def test_the_device_checks_summary_carries_the_same_shares(model):
    """The GPU check's markdown table (from the benchmark's JSON) gives each phase the shares the console prints."""
    from scripts.device_check import summarise

    mels = torch.randn(2, model.dims.n_mels, 3000, generator=torch.Generator().manual_seed(3))
    roofline = measure(model, mels, "en", max_tokens=1, repeats=1)
    report = {"device": "cpu", "limit_pairs": 1, "seconds": 1, "checks": []}
    summary = summarise(report, {}, {"rows": 1, "modes": {}, "roofline": {"32-true": roofline.as_dict()}})
    rows = [line for line in summary.splitlines() if line.startswith("| ") and "GFLOP" not in line][-7:]
    for phase, row, line in zip(roofline.phases, rows, roofline.lines()[2:]):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[0] == phase.phase.strip() and cells[5] in line
        assert cells[6] == "unknown" if roofline.peak.flops_per_s is None else f"{cells[6]} of peak" in line
