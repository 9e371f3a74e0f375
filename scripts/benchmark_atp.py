"""Time attribution patching's full map against real patching of the same grid, on the same items and machine.

    python scripts/benchmark_atp.py [--limit 64] [--model tiny.en] [--accelerator cpu] [--real-cells 64] [--qk-fix]

The full map: every encoder site (`wpatch.sites`) x every block x every one of the 1500 frames, for every item
(pairs x both directions, denoising), by `wpatch.patching.attribution.attribute` (timed on all items, or on the
first `--items` of them: the output says which). Real patching of the same grid patches each (site, block, frame)
cell on its own: one patched run from block t on, and the teacher-forced metric; it is timed on a random sample
of `--real-cells` cells (`real_deltas`, 16 cells of one (site, block) per pass, as a full grid would fill its
passes) and extrapolated per cell. With `--qk-fix`, the map is timed again with AtP*'s QK fix (`attribute(qk_fix=True)`)
on the same items, and its cost is given against plain AtP's. Each timing gives wall and process CPU seconds (the
CPU seconds are the fairer figure on a shared machine).
Prints JSON.
"""

import argparse
import json
import os
import random
import sys
import time

import torch

from datamodules import PairDataModule
from wpatch.patching.attribution import ENCODER_SITES, Cell, attribute, real_deltas
from wpatch.patching.module import PatchingModule
from wpatch.quiet import quiet_lightning

REAL_PASS = 16  # real_deltas' chunk: cells patched in one pass


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--pairs-file", default=None)
    parser.add_argument("--limit", type=int, default=64, help="pairs (x2 directions)")
    parser.add_argument("--items", type=int, default=None, help="time the map on the first N items only")
    parser.add_argument("--tts", default="hibari")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--real-cells", type=int, default=64, help="one-frame cells patched for real (extrapolated)")
    parser.add_argument("--qk-fix", action="store_true", help="also time the map with AtP*'s QK fix")
    parser.add_argument("--json-out", default=None)
    return parser


def starter_items(args, device):
    """The patching module, and each item's recipient (target) and donor (source) log-mels, (source word, target
    word) and speech span (the frames where either word is spoken), from `args` (model, pairs file, limit, voice,
    batch size)."""
    dm = PairDataModule(
        pairs_file=args.pairs_file, limit=args.limit, model=args.model, tts=args.tts, batch_size=args.batch_size
    )
    dm.prepare_data()
    dm.setup("predict")
    module = PatchingModule(model=args.model).to(device)
    recipients, donors, words, spans = [], [], [], []
    for batch in dm.predict_dataloader():
        for b in range(len(batch["item_id"])):
            recipients.append(batch["target"].mel[b])
            donors.append(batch["source"].mel[b])
            words.append(
                tuple(module.scored_word(batch[side].lang[b], batch[side].tokens[b]) for side in ("source", "target"))
            )
            source, target = batch["source"].span[b], batch["target"].span[b]
            spans.append((int(min(source[0], target[0])), int(max(source[1], target[1]))))
    return module, recipients, donors, words, spans


def main(argv: list[str] | None = None) -> dict:
    quiet_lightning()
    args = arguments().parse_args(argv)
    device = torch.device("cuda" if args.accelerator in ("gpu", "cuda") else "cpu")
    module, recipients, donors, words, _ = starter_items(args, device)
    model = module.whisper
    n = min(args.items or len(words), len(words))
    recipients, donors = torch.stack(recipients[:n]).to(device), torch.stack(donors[:n]).to(device)
    words = words[:n]
    n_layer, n_ctx = model.dims.n_audio_layer, model.dims.n_audio_ctx
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(qk_fix: bool):
        """(the map, wall seconds, process CPU seconds)."""
        sync()
        started, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            found = attribute(model, recipients, donors, words, qk_fix=qk_fix)
        sync()
        return found, time.perf_counter() - started, time.process_time() - cpu

    found, atp_seconds, atp_cpu = timed(False)

    grid = n * len(ENCODER_SITES) * n_layer * n_ctx
    rng = random.Random(0)
    cells = []
    for k in range(args.real_cells):
        if k % REAL_PASS == 0:  # cells share a (site, block) a pass at a time, as a full grid's would
            site, layer = rng.choice(ENCODER_SITES), rng.randrange(n_layer)
        mask = torch.zeros(n_ctx)
        mask[rng.randrange(n_ctx)] = 1.0
        cells.append(Cell(rng.randrange(n), site, layer, mask))
    sync()
    started = time.perf_counter()
    with torch.inference_mode():
        real_deltas(model, recipients, donors, words, cells, chunk=REAL_PASS)
    sync()
    real_seconds_per_cell = (time.perf_counter() - started) / len(cells)
    real_seconds = real_seconds_per_cell * grid
    report = {
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "model": args.model,
        "items": n,
        "items_in_set": len(words),
        "map_cells": grid,
        "atp_seconds": round(atp_seconds, 2),
        "atp_seconds_per_item": round(atp_seconds / n, 3),
        "atp_cpu_seconds": round(atp_cpu, 2),
        "real_cells_timed": len(cells),
        "real_seconds_per_cell": round(real_seconds_per_cell, 4),
        "real_seconds_extrapolated": round(real_seconds, 1),
        "speed_ratio": round(real_seconds / atp_seconds, 1),
        "map_shape": list(found.frames.shape),
    }
    if args.qk_fix:
        _, qk_seconds, qk_cpu = timed(True)
        report.update(
            qk_fix_seconds=round(qk_seconds, 2),
            qk_fix_seconds_per_item=round(qk_seconds / n, 3),
            qk_fix_cpu_seconds=round(qk_cpu, 2),
            qk_fix_cost=round(qk_seconds / atp_seconds, 2),
            qk_fix_cpu_cost=round(qk_cpu / atp_cpu, 2),
        )
    print(json.dumps(report, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as out:
            json.dump(report, out, indent=2)
    return report


if __name__ == "__main__":
    sys.exit(main() and 0)
