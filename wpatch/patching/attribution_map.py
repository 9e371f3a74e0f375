"""The attribution map of a batch (`--model.method atp`): the AtP estimate (`wpatch.patching.attribution`) of every
item and patch direction, summed over windows into `wpatch.rows.AttributionRow`s, with real patching beside it
where asked (`--model.validate`, `--model.verify_top`), and the per-frame arrays.

Windows: `width`-frame windows over the item's speech (the frames where the source or target word is spoken, as the
`word` window), the last one cut at the speech's end, and one window `rest` for every other frame (its window_start
and window_end are 0 and n_ctx; `frames` counts the frames it holds).
"""

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from wpatch.patching.attribution import ENCODER_SITES, Cell, attribute, real_deltas
from wpatch.patching.options import AttributionOptions
from wpatch.rows import AttributionRow, PairBatch
from wpatch.text import ScoredWord


@dataclass
class AttributionMap:
    """A batch's attribution rows and per-frame estimates ("<item_id>/<patch direction>" -> float32 array
    (sites, blocks, n_ctx), sites in `ENCODER_SITES` order)."""

    rows: list[dict]
    frames: dict[str, np.ndarray]


def speech_windows(speech: tuple[int, int], width: int, n_ctx: int) -> list[tuple[str, int, int, torch.Tensor]]:
    """(label, start, end, frame mask) of each window: `width`-frame windows over `speech`, then `rest`."""
    a, b = speech
    windows = []
    for start in range(a, b, width):
        end = min(start + width, b)
        mask = torch.zeros(n_ctx)
        mask[start:end] = 1.0
        windows.append((f"{start}-{end}", start, end, mask))
    rest = torch.ones(n_ctx)
    rest[a:b] = 0.0
    windows.append(("rest", 0, n_ctx, rest))
    return windows


def normalised(delta: float, ld_source: float, ld_target: float, patch_direction: str, min_separation: float):
    """The recipient's logit difference moved by `delta`, normalised like `effect` (0: the target's clean run, 1:
    the source's); NaN where the clean runs separate the words by less than `min_separation`."""
    recipient = ld_target if patch_direction == "denoising" else ld_source
    gap = ld_source - ld_target
    return (recipient + delta - ld_target) / gap if gap >= min_separation else math.nan


def cells_to_patch(estimates: list[float], validate: bool, sample: int, verify_top: int, seed: int) -> dict[int, str]:
    """Which cells (indices into `estimates`) to patch for real, and why: every cell ("validate"), or a random
    `sample` of them seeded by the item; then the `verify_top` largest |estimates| not yet patched ("verify")."""
    chosen = {}
    if validate:
        order = range(len(estimates))
        if 0 < sample < len(estimates):
            order = sorted(
                torch.randperm(len(estimates), generator=torch.Generator().manual_seed(seed))[:sample].tolist()
            )
        chosen = dict.fromkeys(order, "validate")
    by_size = sorted(range(len(estimates)), key=lambda k: -abs(estimates[k]))
    for k in by_size[:verify_top]:
        chosen.setdefault(k, "verify")
    return chosen


def attribution_map(
    model,
    batch: PairBatch,
    read: dict[str, tuple[list[ScoredWord], list[ScoredWord]]],
    directions,
    min_separation: float,
    options: AttributionOptions,
) -> AttributionMap:
    """The attribution rows of every item x patch direction of `batch` (denoising: the source clip's activations
    into the target clip's run; noising: the reverse), normalised like `effect`, over `options.atp_window`-frame
    windows; with `graddrop`, each cell's GradDrop score (AtP*: the mean over blocks l of |the estimate with the
    gradient through block l's attention and MLP dropped|); with `qk_fix`, the estimates are AtP*'s (the attention
    pattern recomputed); `validate`, `validate_sample` and `verify_top` choose the cells also patched for real.
    `read[side]`: the item's (source word, target word) read in that side's clip's text (each run is read in its own
    clip's)."""
    n_ctx = model.dims.n_audio_ctx
    jobs = [(b, d) for b in range(len(batch["item_id"])) for d in directions]
    sides = {d: ("source", "target") if d == "denoising" else ("target", "source") for d in directions}
    donors = torch.stack([batch[sides[d][0]].mel[b] for b, d in jobs])
    recipients = torch.stack([batch[sides[d][1]].mel[b] for b, d in jobs])
    donor_words, recipient_words = (
        [(read[sides[d][k]][0][b], read[sides[d][k]][1][b]) for b, d in jobs] for k in (0, 1)
    )
    found = attribute(model, recipients, donors, recipient_words, options.graddrop, donor_words, options.qk_fix)
    table, cells, frames = [], [], {}
    for j, (b, d) in enumerate(jobs):
        source_span, target_span = batch["source"].span[b], batch["target"].span[b]
        speech = (int(min(source_span[0], target_span[0])), int(max(source_span[1], target_span[1])))
        metric, donor_metric = float(found.metric[j]), float(found.donor_metric[j])
        ld_source, ld_target = (donor_metric, metric) if d == "denoising" else (metric, donor_metric)
        item_id = int(batch["item_id"][b])
        frames[f"{item_id}/{d}"] = found.frames[j].cpu().numpy().astype(np.float32)
        here = []
        for i, site in enumerate(ENCODER_SITES):
            for layer in range(found.frames.shape[2]):
                sums = found.frames[j, i, layer]
                for label, start, end, mask in speech_windows(speech, options.atp_window, n_ctx):
                    mask = mask.to(sums.device)
                    dropped = (
                        float((found.dropped[j, :, i, layer] * mask).sum(-1).abs().mean())
                        if found.dropped is not None
                        else math.nan
                    )
                    here.append((site, layer, label, start, end, mask, dropped, float((sums * mask).sum())))
        estimates = [h[-1] for h in here]
        chosen = cells_to_patch(estimates, options.validate, options.validate_sample, options.verify_top, item_id)
        for k, (site, layer, label, start, end, mask, dropped, estimate) in enumerate(here):
            if k in chosen:
                cells.append((len(table), Cell(j, site, layer, mask)))
            table.append(
                AttributionRow(
                    item_id=item_id,
                    patch_direction=d,
                    site=site,
                    layer=layer,
                    window=label,
                    window_start=start,
                    window_end=end,
                    frames=int(mask.sum()),
                    ld_source_clean=ld_source,
                    ld_target_clean=ld_target,
                    estimate=estimate,
                    estimate_effect=normalised(estimate, ld_source, ld_target, d, min_separation),
                    graddrop=dropped,
                    patched=math.nan,
                    patched_effect=math.nan,
                    checked=chosen.get(k, ""),
                )
            )
    deltas = real_deltas(model, recipients, donors, recipient_words, [cell for _, cell in cells])
    for (at, _), delta in zip(cells, deltas.tolist()):
        row = table[at]
        effect = normalised(delta, row.ld_source_clean, row.ld_target_clean, row.patch_direction, min_separation)
        table[at] = replace(row, patched=delta, patched_effect=effect)
    return AttributionMap([row.to_dict() for row in table], frames)
