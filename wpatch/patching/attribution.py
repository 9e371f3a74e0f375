"""Attribution patching (AtP) of the encoder sites: every (site, block, frame) patch of an item estimated at once.

The patching metric M is the teacher-forced logit difference logp_source - logp_target of an item's two words (what
`effect` normalises). On the recipient's clean run, the first-order estimate of patching the donor's activation
into site `a` of block l on a set of frames W is

    sum over frames f in W of  dM/da[f] . (donor a[f] - recipient a[f])

from one forward and one backward pass per recipient (and one clean forward per donor), for every encoder site of
`wpatch.sites` and every block together. Gradients are taken in float32 with autocast off, whatever the run's
precision. `real_deltas` patches for real (the engine's `fast_patched_run`, same-layer patches s == t) to
validate the estimate, or to verify its largest cells.
"""

from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import Tensor
from whisper.model import AudioEncoder, Whisper

from wpatch.patching.attribution_qk import qk_correction
from wpatch.patching.decoding import cross_attention_cache, word_logprobs
from wpatch.patching.encoder import fast_patched_run, site_module, site_states
from wpatch.sites import RESID_PRE, SITES
from wpatch.text import ScoredWord

ENCODER_SITES = tuple(name for name, site in SITES.items() if site.stack == "encoder")
MAX_ROWS_PER_PASS = 4  # recipients differentiated together (bounds the graph's memory)


def word_metric(model: Whisper, features: Tensor, words: list[tuple[ScoredWord, ScoredWord]]) -> Tensor:
    """M per encoder output (N,): log P(first word) - log P(second word) of `words[i]` given output i, teacher-forced
    (each word's probability summed over its surface forms, as `wpatch.patching.decoding.word_logprobs`), through
    openai-whisper's own `TextDecoder` (differentiable)."""
    sequences, owner = [], []
    for i, pair in enumerate(words):
        for k, word in enumerate(pair):
            for form in word.forms:
                sequences.append((word.prefix, form))
                owner.append((i, k))
    length = max(len(prefix) + len(form) for prefix, form in sequences)
    tokens = torch.zeros(len(sequences), length, dtype=torch.long)
    for j, (prefix, form) in enumerate(sequences):
        tokens[j, : len(prefix) + len(form)] = torch.tensor([*prefix, *form])
    tokens = tokens.to(features.device)
    logits = model.decoder(tokens, features[[i for i, _ in owner]]).float().log_softmax(-1)
    per_sequence = []
    for j, (prefix, form) in enumerate(sequences):
        positions = torch.arange(len(prefix) - 1, len(prefix) + len(form) - 1, device=features.device)
        per_sequence.append(logits[j, positions, tokens[j, positions + 1]].sum())
    metric = []
    for i in range(len(words)):
        logp = [torch.stack([p for p, o in zip(per_sequence, owner) if o == (i, k)]).logsumexp(0) for k in (0, 1)]
        metric.append(logp[0] - logp[1])
    return torch.stack(metric)


@torch.no_grad()
def read_metric(model: Whisper, features: Tensor, words: list[tuple[ScoredWord, ScoredWord]]) -> Tensor:
    """`word_metric` without gradients, the way the pipeline reads it (`word_logprobs` on one cross-attention cache
    per output: a fraction of the memory)."""
    logps = word_logprobs(model, cross_attention_cache(model, features), [list(pair) for pair in words])
    return torch.tensor([lp[source] - lp[target] for lp, (source, target) in zip(logps, words)])


def _keep_site(block, site: str, store: list):
    """A hook on `block` that appends the site's activation (kept in the graph) to `store`."""
    if SITES[site].hook == "input":
        return block.register_forward_pre_hook(lambda _m, args: store.append(args[0]))
    return site_module(block, site).register_forward_hook(
        lambda _m, _i, output: store.append(output[0] if isinstance(output, tuple) else output)
    )


def _cut(_module, _inputs, output):
    """GradDrop: the branch's output as a leaf (its value, the gradient stops there), so that the gradient reaches
    earlier activations through the residual stream only."""
    if isinstance(output, tuple):
        return (output[0].detach().requires_grad_(), *output[1:])
    return output.detach().requires_grad_()


def _grad_pass(
    model: Whisper, mels: Tensor, words, drop: int | None = None
) -> tuple[Tensor, dict[str, list[Tensor]], dict[str, list[Tensor]]]:
    """M of each recipient's clean run, its activations at every encoder site and block, and dM/d(activation);
    with `drop`, the gradient through block `drop`'s attention and MLP is dropped (AtP*'s GradDrop)."""
    encoder: AudioEncoder = model.encoder
    kept: dict[str, list[Tensor]] = {site: [] for site in ENCODER_SITES}
    with ExitStack() as stack:
        if drop is not None:  # before the hooks that keep the sites, so that they keep the cut outputs
            for branch in (encoder.blocks[drop].attn, encoder.blocks[drop].mlp):
                stack.callback(branch.register_forward_hook(_cut).remove)
        for block in encoder.blocks:
            for site in ENCODER_SITES:
                stack.callback(_keep_site(block, site, kept[site]).remove)
        metric = word_metric(model, encoder(mels), words)
    flat = [a for site in ENCODER_SITES for a in kept[site]]
    grads = torch.autograd.grad(metric.sum(), flat, allow_unused=True)
    n = len(encoder.blocks)
    grad_of = {
        site: [g if g is not None else torch.zeros_like(a) for g, a in zip(grads[i * n : (i + 1) * n], kept[site])]
        for i, site in enumerate(ENCODER_SITES)
    }
    return metric.detach(), {s: [a.detach() for a in v] for s, v in kept.items()}, grad_of


def _products(donor_states, kept, grads) -> Tensor:
    """(N, sites, blocks, n_ctx): per frame, grad . (donor - recipient)."""
    per_site = [
        torch.stack([((d - a) * g).sum(-1) for d, a, g in zip(donor_states[s], kept[s], grads[s])], dim=1)
        for s in ENCODER_SITES
    ]
    return torch.stack(per_site, dim=1)


@dataclass
class Attribution:
    """The AtP estimates of a batch of recipients: `frames` (N, sites, blocks, n_ctx), the estimate of patching
    each site of each block on that frame alone (donor into recipient, alpha 1; sum frames for a window);
    `metric` (N,) M of each recipient's clean run and `donor_metric` (N,) of each donor's; `dropped`, with
    GradDrop, the same estimates with the gradient through each block's attention and MLP dropped in turn.
    With the QK fix, `frames` are AtP*'s (`wpatch.patching.attribution_qk`); `dropped` stays linear."""

    frames: Tensor
    metric: Tensor
    donor_metric: Tensor
    dropped: Tensor | None = None  # with graddrop: (N, blocks dropped, sites, blocks, n_ctx)


def attribute(
    model: Whisper,
    recipient_mels: Tensor,
    donor_mels: Tensor,
    words: list[tuple[ScoredWord, ScoredWord]],
    graddrop: bool = False,
    qk_fix: bool = False,
) -> Attribution:
    """AtP of every encoder site, block and frame: row i patches donor clip i into recipient clip i, scored on
    `words[i]` (source word, target word). Float32, autocast off, gradients on even inside inference mode.
    `graddrop` costs one more forward and backward pass per block; `qk_fix` (AtP*: the attention pattern that a
    patch's new query and key make, recomputed) one (heads, frames, frames) pass per site and block."""
    frames, metrics, donor_metrics, dropped = [], [], [], []
    device_type = recipient_mels.device.type
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device_type, enabled=False):
        for start in range(0, len(words), MAX_ROWS_PER_PASS):
            part = slice(start, start + MAX_ROWS_PER_PASS)
            recipients, donors = recipient_mels[part].clone().float(), donor_mels[part].clone().float()
            metric, kept, grads = _grad_pass(model, recipients, words[part])
            with torch.no_grad():
                donor_states, donor_final = site_states(model.encoder, donors, set(ENCODER_SITES))
                donor_metrics.append(read_metric(model, donor_final, words[part]))
                found = _products(donor_states, kept, grads)
            if qk_fix:
                found += qk_correction(model.encoder, ENCODER_SITES, kept, donor_states, grads)
            frames.append(found)
            if graddrop:
                drops = [
                    _grad_pass(model, recipients, words[part], block)[2] for block in range(len(model.encoder.blocks))
                ]
                dropped.append(torch.stack([_products(donor_states, kept, g) for g in drops], dim=1))
            metrics.append(metric)
    return Attribution(
        torch.cat(frames), torch.cat(metrics), torch.cat(donor_metrics), torch.cat(dropped) if dropped else None
    )


@dataclass(frozen=True)
class Cell:
    """One same-layer patch to make for real: row `row` of a batch, `site` of block `layer`, on the frames where
    `mask` (n_ctx,) is non-zero, with those weights (alpha)."""

    row: int
    site: str
    layer: int
    mask: Tensor


@torch.no_grad()
def real_deltas(
    model: Whisper,
    recipient_mels: Tensor,
    donor_mels: Tensor,
    words: list[tuple[ScoredWord, ScoredWord]],
    cells: list[Cell],
    chunk: int = 16,
) -> Tensor:
    """M(patched) - M(clean recipient) of every cell, patching for real in float32 (autocast off)."""
    if not cells:
        return torch.zeros(0)
    encoder = model.encoder
    with torch.inference_mode(False), torch.autocast(recipient_mels.device.type, enabled=False):
        recipients, donors = recipient_mels.clone().float(), donor_mels.clone().float()
        rows = sorted({c.row for c in cells})
        sites = {c.site for c in cells} | {RESID_PRE.name}
        at = {row: i for i, row in enumerate(rows)}
        r_states, r_final = site_states(encoder, recipients[rows], sites)
        d_states, _ = site_states(encoder, donors[rows], sites)
        clean = read_metric(model, r_final, [words[row] for row in rows])
        deltas = torch.zeros(len(cells))
        groups: dict[tuple[str, int], list[int]] = {}
        for k, c in enumerate(cells):
            groups.setdefault((c.site, c.layer), []).append(k)
        for (site, layer), ks in groups.items():
            for start in range(0, len(ks), chunk):
                part = ks[start : start + chunk]
                index = [at[cells[k].row] for k in part]
                weight = torch.stack([cells[k].mask for k in part])[..., None].to(recipients.device)
                out = fast_patched_run(
                    encoder, r_states[RESID_PRE.name][layer][index], layer, site, d_states[site][layer][index], weight
                )
                deltas[part] = read_metric(model, out, [words[cells[k].row] for k in part]) - clean[index]
    return deltas
