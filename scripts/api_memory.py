"""Memory over repeated `wpatch.run` calls in one process (as in a notebook): the resident set size after each run.

    python -m scripts.api_memory [--runs 10] [--model tiny.en] [--limit 1] [--out runs/api_memory]

Each call is a new run folder (OUT/run-K) of the starter set's first LIMIT pairs; the model is loaded by the first
call only (`wpatch.models.loading.keep_models`). Prints one line per run: seconds, RSS in MiB, and whether the
model was loaded again.
"""

import argparse
import gc
import shutil
import time
from pathlib import Path

import wpatch
from wpatch.models import loading


def rss_mib() -> float:
    """This process's resident set size in MiB (from /proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--limit", type=int, default=1)
    parser.add_argument("--out", default="runs/api_memory")
    options = parser.parse_args(argv)
    shutil.rmtree(options.out, ignore_errors=True)
    loads, load = [], loading._load
    loading._load = lambda *spec: loads.append(spec) or load(*spec)  # counts the weights read from disk
    print(f"before: RSS {rss_mib():.0f} MiB")
    for k in range(options.runs):
        start, before = time.perf_counter(), len(loads)
        run = wpatch.run(
            pairs="starter",
            model=options.model,
            limit=options.limit,
            output_dir=f"{options.out}/run-{k}",
            progress=False,
        )
        del run
        gc.collect()
        print(
            f"run {k + 1}: {time.perf_counter() - start:.1f} s, RSS {rss_mib():.0f} MiB, "
            f"model loaded: {'yes' if len(loads) > before else 'no'}",
            flush=True,
        )


if __name__ == "__main__":
    main()
