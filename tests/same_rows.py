"""Two runs of the same rows that batched their clips differently (shards, DDP ranks, a resume on more processes):
byte for byte where this CPU's kernels are batch-invariant, else equal up to float32 rounding.

Some CPU kernels block a matrix product by its number of rows (seen with the AVX2 code paths forced,
MKL_ENABLE_INSTRUCTIONS=AVX2: a (3000, 64) x (64, 64) product's first 1500 rows differ from a (1500, 64) one's), so
a clip's log-probability can move by a few units in its last place with the number of clips in its batch.
Then every column that is not a float must still be equal (words, transcripts, layers, override, ...) and every float
within FLOAT32_UNITS rounding units of the log-probabilities' magnitude; the measures derived from log-probabilities
(score, effect) stay within that too, as effect divides by separations of at least one nat (`min_separation`).
"""

from functools import cache
from pathlib import Path

import pandas as pd
import torch

EPS32 = torch.finfo(torch.float32).eps
# measured: 1 unit of an 11-nat log-probability (9.5e-7) after the small model's 3 encoder and 2 decoder blocks;
# effect is a difference of up to three log-probabilities: 64 units leaves a margin of 20 over that
FLOAT32_UNITS = 64


@cache
def batch_invariant_kernels() -> bool:
    """Whether the test model's products (width 64, MLP 256, 1500 frames) give a clip's rows bit for bit whether
    it is alone or batched with another."""
    generator = torch.Generator().manual_seed(0)
    for d_in, d_out in ((64, 64), (64, 256), (256, 64)):
        x, w = torch.randn(2, 1500, d_in, generator=generator), torch.randn(d_out, d_in, generator=generator)
        if not torch.equal(torch.nn.functional.linear(x, w)[:1], torch.nn.functional.linear(x[:1], w)):
            return False
    return True


def tolerance(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """FLOAT32_UNITS rounding units of the largest log-probability in either table."""
    logps = [c for c in a.columns if c.startswith(("logp_", "ld_"))]
    return FLOAT32_UNITS * EPS32 * float(pd.concat([a[logps], b[logps]]).abs().max().max())


def assert_same_table(got: Path, want: Path, logps_of: tuple[Path, Path] | None = None) -> None:
    """`got` equals `want` byte for byte, or (where the kernels are not batch-invariant) in every non-float column and
    within `tolerance` in every float one (the log-probabilities read from `logps_of`, default these tables)."""
    if got.read_bytes() == want.read_bytes():
        return
    assert not batch_invariant_kernels(), f"{got} differs from {want} though the kernels here are batch-invariant"
    a, b = (pd.read_csv(path, keep_default_na=False, na_values=[""]) for path in (got, want))
    assert list(a.columns) == list(b.columns) and len(a) == len(b), got
    floats = [c for c in a.columns if a[c].dtype.kind == "f" or b[c].dtype.kind == "f"]
    assert a.drop(columns=floats).equals(b.drop(columns=floats)), got
    allowed = tolerance(*(pd.read_csv(p) for p in logps_of)) if logps_of else tolerance(a, b)
    assert (a[floats].isna() == b[floats].isna()).all().all(), got
    difference = (a[floats] - b[floats]).abs().fillna(0).max().max()
    assert difference <= allowed, (got, difference, allowed)


def assert_close_values(got, want, allowed: float, where: str = "") -> None:
    """Nested summaries (dicts, lists, numbers, strings) equal, numbers that are floats within `allowed`."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), where
        for key in want:
            assert_close_values(got[key], want[key], allowed, f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for k, (g, w) in enumerate(zip(got, want)):
            assert_close_values(g, w, allowed, f"{where}[{k}]")
    elif isinstance(want, float) and isinstance(got, float):
        assert got == want or abs(got - want) <= allowed or (got != got and want != want), (where, got, want)
    else:
        assert got == want, (where, got, want)
