"""AtP and AtP* (`--model.qk_fix`) against real one-frame patches on real items: does the QK fix help there?

    python scripts/atp_qk_check.py [--limit 2] [--model tiny.en] [--frames 3]

For every item (pairs x both directions, denoising) and every block that a self-attention reads (for `attn_out`
and `mlp_out`: all but the last), one-frame patches at alpha 1 patched for real (`real_deltas`) on `--frames`
frames per block chosen two ways: where AtP* and AtP differ most (where the fix matters; a choice that favours
neither), and at random among the speech frames (seeded). Prints, per site and choice, the mean |real change|,
each estimate's mean absolute error and on how many cells AtP* is the closer, as JSON.
"""

import argparse
import json
import random
import sys

import torch

from scripts.benchmark_atp import starter_items
from wpatch.patching.attribution import ENCODER_SITES, Cell, attribute, real_deltas
from wpatch.quiet import quiet_lightning
from wpatch.sites import BLOCK_OUT, RESID_PRE


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--pairs-file", default=None)
    parser.add_argument("--limit", type=int, default=2, help="pairs (x2 directions)")
    parser.add_argument("--tts", default="hibari")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--frames", type=int, default=3, help="frames per item, block and choice")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    quiet_lightning()
    args = arguments().parse_args(argv)
    module, recipients, donors, words, spans = starter_items(args, torch.device("cpu"))
    model, recipients, donors = module.whisper, torch.stack(recipients), torch.stack(donors)
    with torch.inference_mode():
        atp = attribute(model, recipients, donors, words).frames
        star = attribute(model, recipients, donors, words, qk_fix=True).frames
    rng, found = random.Random(0), []
    for s, site in enumerate(ENCODER_SITES):
        if site == BLOCK_OUT.name:  # block_out of block l is resid_pre of block l+1
            continue
        for choice in ("largest difference", "random speech frames"):
            cells, at = [], []
            for n in range(len(words)):
                for layer in range(model.dims.n_audio_layer - (site != RESID_PRE.name)):
                    if choice == "largest difference":
                        frames = (star[n, s, layer] - atp[n, s, layer]).abs().topk(args.frames).indices.tolist()
                    else:
                        frames = rng.sample(range(*spans[n]), args.frames)
                    for frame in frames:
                        mask = torch.zeros(model.dims.n_audio_ctx)
                        mask[frame] = 1.0
                        cells.append(Cell(n, site, layer, mask))
                        at.append((n, layer, frame))
            with torch.inference_mode():
                real = real_deltas(model, recipients, donors, words, cells)
            index = tuple(torch.tensor(at).T)
            error_atp, error_star = (atp[:, s][index] - real).abs(), (star[:, s][index] - real).abs()
            found.append(
                {
                    "site": site,
                    "frames": choice,
                    "cells": len(cells),
                    "mean_abs_real": round(real.abs().mean().item(), 4),
                    "mae_atp": round(error_atp.mean().item(), 4),
                    "mae_atp_star": round(error_star.mean().item(), 4),
                    "atp_star_closer": int((error_star < error_atp).sum()),
                }
            )
    print(json.dumps({"model": args.model, "items": len(words), "rows": found}, indent=2))
    return found


if __name__ == "__main__":
    sys.exit(main() and 0)
