"""`keep_freed_buffers`: a large buffer freed and asked for again is served from pages already mapped, so repeated
batches stop page-faulting their activations in anew (counted by the kernel's minor faults);
`WPATCH_KEEP_FREED_BUFFERS=0` leaves malloc as it is; `give_back_freed_buffers` returns the kept pages when a run
ends (counted by resident memory)."""

import os
import subprocess
import sys

import lightning as L
import pytest

import wpatch.patching.module
from datamodules import PairDataModule
from wpatch.patching.module import PatchingModule

RUNS, MIB = 10, 64
FAULTS_OF = f"""
import resource, sys, torch
from wpatch.allocator import keep_freed_buffers
if sys.argv[1] != "default":  # kept, or opted out (WPATCH_KEEP_FREED_BUFFERS=0: nothing changed)
    assert keep_freed_buffers() == (sys.argv[1] == "kept")
for _ in range(3):  # the first buffers map their pages in either way
    torch.ones({MIB} << 18)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({RUNS}):
    torch.ones({MIB} << 18)  # {MIB} MiB of float32, freed at once
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


RESIDENT_MIB_OF = f"""
import os, torch
from wpatch.allocator import give_back_freed_buffers, keep_freed_buffers
resident = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
assert keep_freed_buffers()
before = resident()
torch.ones({4 * MIB} << 18)  # {4 * MIB} MiB, every page written, then freed
kept = resident() - before
assert give_back_freed_buffers()
print(kept, resident() - before)
"""


def minor_faults(mode: str, **env: str) -> int:
    run = subprocess.run([sys.executable, "-c", FAULTS_OF, mode], capture_output=True, check=True, env=os.environ | env)
    return int(run.stdout)


glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")


@glibc_only
def test_freed_buffers_are_reused_without_page_faults():
    pages = RUNS * (MIB << 20) // 4096  # every page of every buffer, when each is mapped afresh
    assert minor_faults("default") > pages / 2
    assert minor_faults("kept") < pages / 4  # at most two buffers mapped again (the heap top may move once)


@glibc_only
def test_the_environment_can_leave_malloc_as_it_is():
    pages = RUNS * (MIB << 20) // 4096
    assert minor_faults("opted out", WPATCH_KEEP_FREED_BUFFERS="0") > pages / 2


@glibc_only
def test_the_kept_pages_are_given_back():
    run = subprocess.run([sys.executable, "-c", RESIDENT_MIB_OF], capture_output=True, check=True, text=True)
    kept, after = map(float, run.stdout.split())
    assert kept > 3 * MIB  # the freed buffer stayed resident (a fresh mapping would have been unmapped)
    assert after < MIB  # and went back: what stays is the interpreter's own small growth


def test_a_run_sets_it_up_and_gives_back_at_its_end(tmp_path, small_model_path, monkeypatch):
    calls = []
    monkeypatch.setattr(wpatch.patching.module, "keep_freed_buffers", lambda: calls.append("keep") or True)
    monkeypatch.setattr(wpatch.patching.module, "give_back_freed_buffers", lambda: calls.append("give") or True)
    csv = tmp_path / "pairs.csv"
    csv.write_text("word_a,word_b\nbat,pat\n")
    dm = PairDataModule(pairs_file=str(csv), model=small_model_path, tts="espeak", cache_dir=str(tmp_path / "clips"))
    module = PatchingModule(model=small_model_path, source_layers=[0], target_layers=[0])
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).predict(module, datamodule=dm)
    assert calls == ["keep", "give"]
