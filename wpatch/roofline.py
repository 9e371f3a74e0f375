"""How close each phase of a patching run comes to the machine's limits, measured in one run.

Each phase runs the harness's own code (`wpatch.patching.encoder`, `wpatch.patching.decoding`) on real log-mels;
its work is counted from the model's dimensions (`wpatch.flops`), its time is the best of a few repeats after a
warm-up, and its rate is set against two ceilings:
- the practical one: a plain matrix product of an encoder block's largest shape (its MLP's first layer over the
  same clips) in the same dtype, timed on the same machine in the same run, before and after the phases (the
  faster kept, so that one disturbed timing cannot lower it);
- the nominal peak: on the CPU, cores x FLOP per cycle x clock, the FLOP per cycle from the instruction set
  (AVX2: 2 FMA units x 8 fp32 lanes x 2; AVX-512: 2 x 16 x 2; AVX512-BF16: 2 x 32 x 2; AMX-BF16: 1,024) and the
  clock from /proc/cpuinfo (a virtual machine reports its base clock there; turbo and AVX-512 clocks differ);
  on a GPU, the datasheet's dense figure for the dtype (`GPU_PEAKS`).
"""

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from whisper.model import Whisper
from whisper.tokenizer import get_tokenizer

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
from wpatch.sites import BLOCK_OUT, DEC_RESID, RESID_PRE

# Datasheet dense peaks in TFLOP/s by dtype (fp32 without tensor cores; "tf32" where PyTorch lets fp32 matrix
# products use them), most specific name first: the first whose key is in the device's name applies.
GPU_PEAKS = {
    "H200": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4},
    "H100 PCIe": {"float32": 51.2, "tf32": 378.0, "bfloat16": 756.0, "float16": 756.0},
    "H100 NVL": {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.0, "float16": 835.0},
    "H100": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4},
    "A100": {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0, "float16": 312.0},
    "L40S": {"float32": 91.6, "tf32": 183.0, "bfloat16": 366.0, "float16": 366.0},
    "L4": {"float32": 30.3, "tf32": 60.0, "bfloat16": 121.0, "float16": 121.0},
    "A10": {"float32": 31.2, "tf32": 62.5, "bfloat16": 125.0, "float16": 125.0},
    "V100": {"float32": 15.7, "float16": 125.0},
    "T4": {"float32": 8.1, "float16": 65.0},
}
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass(frozen=True)
class NominalPeak:
    """The device's nominal peak in FLOP/s for a dtype (None where unknown) and how it was found."""

    flops_per_s: float | None
    how: str


def cpu_info() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as info:
            text = info.read().split("\n\n")[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def cpu_peak(dtype: torch.dtype, cores: int, info: dict[str, str] | None = None) -> NominalPeak:
    """cores x FLOP per cycle (from the instruction-set flags, 2 FMA units assumed) x clock (cpuinfo's MHz)."""
    info = cpu_info() if info is None else info
    flags, mhz = set(info.get("flags", "").split()), float(info.get("cpu MHz", 0) or 0)
    if dtype == torch.bfloat16 and "amx_bf16" in flags:
        per_cycle, isa = 1024, "AMX-BF16 1024"
    elif dtype == torch.bfloat16 and "avx512_bf16" in flags:
        per_cycle, isa = 128, "AVX512-BF16 2 FMA x 32 lanes x 2"
    elif dtype in (torch.float32, torch.bfloat16) and "avx512f" in flags:  # bf16 without it runs as fp32
        per_cycle, isa = 64, "AVX-512 2 FMA x 16 lanes x 2"
    elif dtype in (torch.float32, torch.bfloat16) and {"avx2", "fma"} <= flags:
        per_cycle, isa = 32, "AVX2 2 FMA x 8 lanes x 2"
    else:
        return NominalPeak(None, f"no nominal peak known for {dtype} on this CPU")
    if not mhz:
        return NominalPeak(None, "no clock in /proc/cpuinfo")
    return NominalPeak(
        cores * per_cycle * mhz * 1e6, f"{cores} cores x {per_cycle} FLOP/cycle ({isa}) x {mhz / 1000:.2f} GHz"
    )


def gpu_peak(name: str, dtype: torch.dtype, tf32: bool) -> NominalPeak:
    """The datasheet's dense figure for the device `name` and `dtype` (tf32 where fp32 products may use it)."""
    key = "tf32" if dtype == torch.float32 and tf32 else str(dtype).removeprefix("torch.")
    for model, peaks in GPU_PEAKS.items():
        if model in name:
            if key in peaks:
                return NominalPeak(peaks[key] * 1e12, f"{model} datasheet, {key} dense, {peaks[key]} TFLOP/s")
            break
    return NominalPeak(None, f"no datasheet figure for {key} on {name}")


def nominal_peak(device: torch.device, dtype: torch.dtype) -> NominalPeak:
    """The nominal peak of `device` for `dtype`."""
    if device.type == "cuda":
        return gpu_peak(torch.cuda.get_device_name(device), dtype, torch.backends.cuda.matmul.allow_tf32)
    return cpu_peak(dtype, torch.get_num_threads())


@dataclass(frozen=True)
class PhaseRate:
    """One phase: what it ran on, its counted FLOPs and its best time."""

    phase: str
    shape: str
    flops: int
    seconds: float

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.seconds


@dataclass
class Roofline:
    """Every phase's rate against the practical (matrix product) and nominal ceilings of one device and dtype."""

    device: str
    dtype: str
    matmul_shape: str
    matmul_flops_per_s: float
    peak: NominalPeak
    phases: list[PhaseRate] = field(default_factory=list)

    def shares(self, phase: PhaseRate) -> tuple[float, float | None]:
        """The phase's rate in percent of the matmul ceiling and of the nominal peak (None where unknown)."""
        peak = self.peak.flops_per_s
        return 100 * phase.flops_per_s / self.matmul_flops_per_s, 100 * phase.flops_per_s / peak if peak else None

    def lines(self) -> list[str]:
        """The printed table: one line per phase, with its share of each ceiling."""
        peak = self.peak.flops_per_s
        head = [
            f"roofline on {self.device}, {self.dtype}: matmul ceiling {self.matmul_flops_per_s / 1e9:.1f} GFLOP/s "
            f"({self.matmul_shape}); nominal peak "
            + (f"{peak / 1e9:.1f} GFLOP/s ({self.peak.how})" if peak else f"unknown ({self.peak.how})"),
            f"  {'phase':<28} {'shape':<34} {'GFLOP':>9} {'seconds':>8} {'GFLOP/s':>8} {'% of matmul':>11}  vs nominal",
        ]
        return head + [
            f"  {p.phase:<28} {p.shape:<34} {p.flops / 1e9:>9.2f} {p.seconds:>8.3f} {p.flops_per_s / 1e9:>8.1f} "
            f"{of_matmul:>10.1f}%  " + (f"{of_peak:.1f}% of peak" if of_peak is not None else "% of peak unknown")
            for p in self.phases
            for of_matmul, of_peak in [self.shares(p)]
        ]

    def markdown(self) -> list[str]:
        """The same table in markdown (the GPU check's summary, docs/performance.md)."""
        head = [
            f"roofline on {self.device}, {self.dtype}: matmul ceiling {self.matmul_flops_per_s / 1e9:.0f} GFLOP/s "
            f"({self.matmul_shape}), nominal peak {self.peak.how}",
            "",
            "| phase | shape | GFLOP | seconds | GFLOP/s | % of matmul | % of peak |",
            "|---|---|---|---|---|---|---|",
        ]
        return head + [
            f"| {p.phase.strip()} | {p.shape} | {p.flops / 1e9:.2f} | {p.seconds:.4f} | {p.flops_per_s / 1e9:.1f} | "
            f"{of_matmul:.1f}% | " + (f"{of_peak:.1f}% |" if of_peak is not None else "unknown |")
            for p in self.phases
            for of_matmul, of_peak in [self.shares(p)]
        ]

    def as_dict(self) -> dict:
        return asdict(self) | {"phases": [asdict(p) | {"gflops_per_s": p.flops_per_s / 1e9} for p in self.phases]}

    @classmethod
    def from_dict(cls, saved: dict) -> "Roofline":
        """The roofline `as_dict` wrote (the benchmark's JSON)."""
        fields = {k: saved[k] for k in ("device", "dtype", "matmul_shape", "matmul_flops_per_s")}
        phases = [PhaseRate(p["phase"], p["shape"], p["flops"], p["seconds"]) for p in saved["phases"]]
        return cls(**fields, peak=NominalPeak(**saved["peak"]), phases=phases)


def best_seconds(run: Callable, device: torch.device, repeats: int):
    """The shortest of `repeats` timed calls of `run` after one warm-up call, and the last call's result."""
    result, times = run(), []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times), result


@torch.no_grad()
def measure(
    model: Whisper, mels: torch.Tensor, language: str, max_tokens: int, precision: str = "32-true", repeats: int = 3
) -> Roofline:
    """The roofline of `model` on the clips `mels` (N, n_mels, 3000): the clean encoder of the N clips; the
    patched encoder (the whole-block path over every layer pair); attention and MLP of block 0 over the N clips;
    then, on the patched outputs, the cross-attention keys and values, greedy decoding (`max_tokens` at most)
    and teacher-forced scoring of two continuations each."""
    device, dims, encoder = mels.device, model.dims, model.encoder
    dtype = AUTOCAST.get(precision, torch.float32)
    autocast = torch.autocast(device.type, dtype) if precision in AUTOCAST else nullcontext()
    n, ctx, d = len(mels), dims.n_audio_ctx, dims.n_audio_state
    clips = f"{n} clips x {ctx} frames"
    weight = torch.randn(4 * d, d, device=device, dtype=dtype)
    rows = torch.randn(n * ctx, d, device=device, dtype=dtype)

    def ceiling() -> float:
        """The plain matrix product's FLOP/s."""
        return matmul(n * ctx, d, 4 * d) / best_seconds(lambda: F.linear(rows, weight), device, repeats)[0]

    roofline = Roofline(
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        str(dtype).removeprefix("torch."),
        f"({n * ctx} x {d}) @ ({d} x {4 * d})",
        ceiling(),
        nominal_peak(device, dtype),
    )

    def phase(name: str, run: Callable, work: Callable[[], tuple[str, int]]):
        """Time `run`; `work` (called after it) gives what it ran on and its FLOPs."""
        with autocast:
            seconds, result = best_seconds(run, device, repeats)
        roofline.phases.append(PhaseRate(name, *work(), seconds))
        return result

    sites = {BLOCK_OUT.name, RESID_PRE.name}
    states, clean = phase(
        "clean encoder", lambda: site_states(encoder, mels, sites), lambda: (clips, CleanEncoderWork(dims, n).flops)
    )
    pairs = layer_pairs(dims.n_audio_layer)
    blocks = sum(dims.n_audio_layer - 1 - t for s, t in pairs if s != t)
    patched, _ = phase(
        "patched encoder blocks",
        lambda: fast_whole_block_outputs(encoder, states[BLOCK_OUT.name], clean, pairs),
        lambda: (f"{n} clips x {blocks} block runs", EncoderBlocksWork(dims, n, blocks).flops),
    )
    block, x = encoder.blocks[0], states[RESID_PRE.name][0]
    attention, mlp = AttentionWork(d, ctx, ctx, n), MlpWork(d, n * ctx)
    phase("  attention (block 0)", lambda: block.attn(block.attn_ln(x)), lambda: (clips, attention.flops))
    phase("  MLP (block 0)", lambda: block.mlp(block.mlp_ln(x)), lambda: (clips, mlp.flops))
    features = patched.flatten(0, 1)
    outputs = len(features)
    cross = phase(
        "cross-attention keys/values",
        lambda: cross_attention_cache(model, features),
        lambda: (f"{outputs} encoder outputs", CrossKeysValuesWork(dims, outputs).flops),
    )
    passes = []  # (new tokens, cached tokens) of each greedy pass, seen at block 0's residual stream

    def count(block: int, site: str, value: torch.Tensor, offset: int) -> torch.Tensor:
        if block == 0 and site == DEC_RESID.name:
            passes.append((value.shape[2], offset))
        return value

    def greedy() -> tuple[str, int]:
        steps = len(passes) // (repeats + 1)
        return f"{outputs} outputs x {steps} steps", GreedyWork(dims, outputs, passes[0][0], steps).flops

    phase(
        "greedy decoding", lambda: greedy_transcripts(model, cross, language, max_tokens=max_tokens, edit=count), greedy
    )
    tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages, language=language)
    prefix = list(tokenizer.sot_sequence_including_notimestamps)
    forms = [tokenizer.encode(" bat"), tokenizer.encode(" Bat")]
    asked = [[(prefix, form) for form in forms]] * outputs
    scoring = ScoringWork(dims, outputs, len(forms), len(prefix) + max(map(len, forms)), outputs * sum(map(len, forms)))
    phase(
        "teacher-forced scoring",
        lambda: sequence_logprobs(model, cross, asked),
        lambda: (f"{outputs} outputs x {len(forms)} sequences", scoring.flops),
    )
    # timed again after the phases, the faster time kept: one disturbed timing cannot lower the ceiling
    roofline.matmul_flops_per_s = max(roofline.matmul_flops_per_s, ceiling())
    return roofline
