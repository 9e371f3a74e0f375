"""`keep_freed_buffers`: a large buffer freed and asked for again is served from pages already mapped, so repeated
batches stop page-faulting their activations in anew (counted by the kernel's minor faults)."""

import subprocess
import sys

import pytest

RUNS, MIB = 10, 64
FAULTS_OF = f"""
import resource, sys, torch
from wpatch.allocator import keep_freed_buffers
if sys.argv[1] == "kept":
    assert keep_freed_buffers()
for _ in range(3):  # the first buffers map their pages in either way
    torch.ones({MIB} << 18)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({RUNS}):
    torch.ones({MIB} << 18)  # {MIB} MiB of float32, freed at once
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def minor_faults(mode: str) -> int:
    return int(subprocess.run([sys.executable, "-c", FAULTS_OF, mode], capture_output=True, check=True).stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_buffers_are_reused_without_page_faults():
    pages = RUNS * (MIB << 20) // 4096  # every page of every buffer, when each is mapped afresh
    assert minor_faults("default") > pages / 2
    assert minor_faults("kept") < pages / 4  # at most two buffers mapped again (the heap top may move once)
