"""`keep_freed_buffers`: a large buffer freed and asked for again is served from pages already mapped, so repeated
batches stop page-faulting their activations in anew (counted by the kernel's minor faults)."""

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


def test_a_run_sets_it_up(tmp_path, small_model_path, monkeypatch):
    calls = []
    monkeypatch.setattr(wpatch.patching.module, "keep_freed_buffers", lambda: calls.append(True) or True)
    csv = tmp_path / "pairs.csv"
    csv.write_text("word_a,word_b\nbat,pat\n")
    dm = PairDataModule(pairs_file=str(csv), model=small_model_path, tts="espeak", cache_dir=str(tmp_path / "clips"))
    module = PatchingModule(model=small_model_path, source_layers=[0], target_layers=[0])
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).predict(module, datamodule=dm)
    assert calls == [True]
