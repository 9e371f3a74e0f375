"""How a run's cost grows with the work: rows per second and peak memory as pairs and layer pairs grow.

    python scripts/scaling.py --model tiny.en --pairs 16 64 256 869   # pairs grow, a real model
    python scripts/scaling.py --blocks 4 6 12 --pairs 4               # layer pairs grow, random models

Each point is one `wpatch predict` in a fresh process (encoder `block_out`, window all, denoising, fp32, CPU, the
`english` pairs with hibari), either on `--model` (a name or checkpoint `wpatch predict` takes) or on a randomly
initialised Whisper of tiny's width (384 wide, 6 heads, 4 decoder blocks) with each of `--blocks` encoder blocks,
so layer pairs grow as blocks squared. The clips are synthesised before
the clock starts. Rows per second counts from the run claiming its folder to its last part written (the log-mels
and every batch; Python's start, model loading and the analysis left out); CPU seconds and peak memory (resident
set) are the whole process's. A random model never ends its transcript early, so every row decodes `max_tokens`
(8) tokens: real weights, which stop after the word, are faster per row. Also prints the log-mel cache's bytes
per clip.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from whisper.model import ModelDimensions, Whisper

ROOT = Path(__file__).resolve().parents[1]
RUN = (
    "import resource, sys\nfrom wpatch.cli import predict\npredict(sys.argv[1:], ['wpatch', 'predict'])\n"
    "usage = resource.getrusage(resource.RUSAGE_SELF)\n"
    "print('peak_rss_kib', usage.ru_maxrss, 'cpu_s', usage.ru_utime + usage.ru_stime, file=sys.stderr)\n"
)


def tiny_width(blocks: int) -> Whisper:
    """A random Whisper of tiny.en's width with `blocks` encoder blocks (seeded)."""
    torch.manual_seed(0)
    dims = ModelDimensions(80, 1500, 384, 6, blocks, 51864, 448, 384, 6, 4)
    return Whisper(dims).eval()


def models(options, root: Path) -> list[tuple[str, int]]:
    """(model argument, encoder blocks) of each model measured: `--model`, or a random checkpoint per `--blocks`."""
    if options.model:
        from wpatch.models.loading import model_dims

        return [(options.model, model_dims(options.model).n_audio_layer)]
    found = []
    for blocks in options.blocks:
        checkpoint = root / f"random-{blocks}.pt"
        model = tiny_width(blocks)
        torch.save({"dims": model.dims.__dict__, "model_state_dict": model.state_dict()}, checkpoint)
        found.append((str(checkpoint), blocks))
    return found


def point(checkpoint: str, pairs: int, out: Path, batch_size: int) -> dict:
    """One run: rows, the process's seconds, rows/s, the process's CPU seconds and peak resident memory (MiB)."""
    arguments = [
        *("--model.model", str(checkpoint), "--data.pairs_file", "english", "--data.limit", str(pairs)),
        *("--data.batch_size", str(batch_size), "--trainer.accelerator", "cpu", "--trainer.devices", "1"),
        *("--writer.output_dir", str(out), "--writer.verbose", "false", "--trainer.enable_progress_bar", "false"),
    ]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RUN, *arguments],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    peak, _, cpu = done.stderr.split("peak_rss_kib")[-1].split()[:3]
    records = [json.loads(p.read_text()) for p in sorted((out / "parts").glob("items-*.json"))]
    records.sort(key=lambda r: r["written"])
    rows = sum(r["rows"] for r in records)
    working_s = records[-1]["written"] - records[0]["session_started"]
    return {
        "rows": rows,
        "process_s": round(seconds, 1),
        "rows_per_s": round(rows / working_s, 2),
        "cpu_s": round(float(cpu), 1),
        "peak_rss_mib": round(int(peak) / 1024),
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--blocks", type=int, nargs="+", default=[6, 12], help="random models' encoder blocks")
    parser.add_argument("--model", default=None, help="a real model instead of the random ones (--blocks unused)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--json-out", default=None)
    options = parser.parse_args(argv)
    root = Path(options.out or tempfile.mkdtemp(prefix="wpatch-scaling-"))
    root.mkdir(parents=True, exist_ok=True)
    from datamodules import PairDataModule

    data = PairDataModule(pairs_file="english", limit=max(options.pairs), model=options.model or "tiny.en")
    data.prepare_data()  # every clip synthesised before any clock starts
    results = []
    for name, blocks in models(options, root):
        for pairs in options.pairs:
            label = Path(name).name.removesuffix(".pt")
            result = {"model": label, "blocks": blocks, "layer_pairs": blocks**2, "pairs": pairs, "items": 2 * pairs}
            result |= point(name, pairs, root / f"{label}-p{pairs}", options.batch_size)
            results.append(result)
            print(json.dumps(result), flush=True)
    per_clip = mel_bytes_per_clip(data)
    print(json.dumps({"mel_bytes_per_clip": per_clip, "mel_gb_per_1000_clips": round(per_clip * 1000 / 1e9, 3)}))
    if options.json_out:
        Path(options.json_out).write_text(json.dumps({"points": results, "mel_bytes_per_clip": per_clip}, indent=2))
    return results


def mel_bytes_per_clip(data) -> int:
    """Bytes of one clip's log-mel file in the cache (the same for every clip of a model's n_mels)."""
    data.setup("predict")
    sizes = {f.stat().st_size for f in data.mels.files}
    return max(sizes)


if __name__ == "__main__":
    main()
