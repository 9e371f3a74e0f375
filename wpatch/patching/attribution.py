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
from wpatch.patching.decoding import cross_attention_cache, word_logprob, word_logprobs
from wpatch.patching.encoder import fast_patched_run, site_states
from wpatch.sites import RESID_PRE, SITES
from wpatch.text import ScoredWord

ENCODER_SITES = tuple(name for name, site in SITES.items() if site.stack == "encoder" and site.whisper)
MAX_ROWS_PER_PASS = 4  # recipients differentiated together (bounds the graph's memory)


def word_metric(model: Whisper, features: Tensor, words: list[tuple[ScoredWord, ScoredWord]]) -> Tensor:
    """M per encoder output (N,): log P(first word) - log P(second word) of `words[i]` given output i, teacher-forced
    (each word's probability from its surface forms as `wpatch.patching.decoding.word_logprobs` reads it), through
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
        logp = [
            word_logprob(torch.stack([p for p, o in zip(per_sequence, owner) if o == (i, k)]), words[i][k])
            for k in (0, 1)
        ]
        metric.append(logp[0] - logp[1])
    return torch.stack(metric)


@torch.no_grad()
def read_metric(model: Whisper, features: Tensor, words: list[tuple[ScoredWord, ScoredWord]]) -> Tensor:
    """`word_metric` without gradients, the way the pipeline reads it (`word_logprobs` on one cross-attention cache
    per output: a fraction of the memory)."""
    logps = word_logprobs(model, cross_attention_cache(model, features), [list(pair) for pair in words])
    return torch.tensor([lp[source] - lp[target] for lp, (source, target) in zip(logps, words)])


def _cut(_module, _inputs, output):
    """GradDrop: the branch's output as a leaf (its value, the gradient stops there), so that the gradient reaches
    earlier activations through the residual stream only."""
    if isinstance(output, tuple):
        return (output[0].detach().requires_grad_(), *output[1:])
    return output.detach().requires_grad_()


@dataclass
class GradPass:
    """One differentiated clean run of a pass's recipients: M (N,), the activations at every encoder site and block
    (site -> list over blocks of (N, frames, d)), dM/d(activation) in the same shape, and the encoder output."""

    metric: Tensor
    kept: dict[str, list[Tensor]]
    grads: dict[str, list[Tensor]]
    final: Tensor


def _grad_pass(model: Whisper, mels: Tensor, words, drop: int | None = None) -> GradPass:
    """The recipients' clean run and its gradients; with `drop`, the gradient through block `drop`'s attention and
    MLP is dropped (AtP*'s GradDrop)."""
    encoder: AudioEncoder = model.encoder
    with ExitStack() as stack:
        if drop is not None:  # before the hooks that keep the sites, so that they keep the cut outputs
            for branch in (encoder.blocks[drop].attn, encoder.blocks[drop].mlp):
                stack.callback(branch.register_forward_hook(_cut).remove)
        kept, final = site_states(encoder, mels, set(ENCODER_SITES))
    metric = word_metric(model, final, words)
    flat = [a for site in ENCODER_SITES for a in kept[site]]
    grads = torch.autograd.grad(metric.sum(), flat, allow_unused=True)
    n = len(encoder.blocks)
    grad_of = {
        site: [g if g is not None else torch.zeros_like(a) for g, a in zip(grads[i * n : (i + 1) * n], kept[site])]
        for i, site in enumerate(ENCODER_SITES)
    }
    detached = {site: [a.detach() for a in kept[site]] for site in ENCODER_SITES}
    return GradPass(metric.detach(), detached, grad_of, final.detach())


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
    donor_words: list[tuple[ScoredWord, ScoredWord]] | None = None,
    qk_fix: bool = False,
) -> Attribution:
    """AtP of every encoder site, block and frame: row i patches donor clip i into recipient clip i, scored on
    `words[i]` (source word, target word; on the donor's own run `donor_words[i]`, default the same). Float32,
    autocast off, gradients on even inside inference mode.
    `graddrop` costs one more forward and backward pass per block; `qk_fix` (AtP*: the attention pattern that a
    patch's new query and key make, recomputed) one (heads, frames, frames) pass per site and block."""
    donor_words = donor_words or words
    recipient_ids, donor_ids = _clip_ids(recipient_mels, donor_mels)
    found: dict[int, tuple] = {}  # row -> (frames, metric, donor metric, dropped)
    device_type = recipient_mels.device.type
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device_type, enabled=False):
        for rows in _passes(recipient_ids, donor_ids):
            recipients = recipient_mels[rows].clone().float()
            clean = _grad_pass(model, recipients, [words[r] for r in rows])
            with torch.no_grad():
                donor_states, donor_final = _donor_states(model, donor_mels, rows, recipient_ids, donor_ids, clean)
                donor_metric = read_metric(model, donor_final, [donor_words[r] for r in rows])
                frames = _products(donor_states, clean.kept, clean.grads)
            if qk_fix:
                frames += qk_correction(model.encoder, ENCODER_SITES, clean.kept, donor_states, clean.grads)
            drops = None
            if graddrop:
                drops = [
                    _grad_pass(model, recipients, [words[r] for r in rows], block).grads
                    for block in range(len(model.encoder.blocks))
                ]
                drops = torch.stack([_products(donor_states, clean.kept, g) for g in drops], dim=1)
            for k, row in enumerate(rows):
                found[row] = (frames[k], clean.metric[k], donor_metric[k], None if drops is None else drops[k])
    frames, metrics, donor_metrics, dropped = zip(*(found[row] for row in range(len(words))))
    return Attribution(
        torch.stack(frames),
        torch.stack(metrics),
        torch.stack(donor_metrics),
        torch.stack(dropped) if graddrop else None,
    )


def _clip_ids(recipient_mels: Tensor, donor_mels: Tensor) -> tuple[list[int], list[int]]:
    """A number per distinct clip (equal log-mels, equal number) for each row's recipient and donor."""
    clips: list[Tensor] = []

    def number(mel: Tensor) -> int:
        for k, clip in enumerate(clips):
            if torch.equal(clip, mel):
                return k
        clips.append(mel)
        return len(clips) - 1

    return [number(mel) for mel in recipient_mels], [number(mel) for mel in donor_mels]


def _passes(recipient_ids: list[int], donor_ids: list[int]) -> list[list[int]]:
    """The rows in passes of at most MAX_ROWS_PER_PASS, the two directions of a pair (one row's donor clip is the
    other's recipient) in the same pass, so that the donor's clean run is read from the recipient's."""
    paired, single, placed = [], [], set()
    for i, donor in enumerate(donor_ids):
        if i in placed:
            continue
        placed.add(i)
        partner = next((j for j, r in enumerate(recipient_ids) if j not in placed and r == donor), None)
        if partner is None:
            single.append(i)
        else:
            placed.add(partner)
            paired += [i, partner]
    order = paired + single  # pairs first: with an even pass size no pair is split
    return [order[k : k + MAX_ROWS_PER_PASS] for k in range(0, len(order), MAX_ROWS_PER_PASS)]


def _donor_states(
    model: Whisper, donor_mels: Tensor, rows: list[int], recipient_ids, donor_ids, clean: GradPass
) -> tuple[dict[str, list[Tensor]], Tensor]:
    """The donors' activations and encoder outputs for `rows`: a donor clip that is one of the pass's recipients
    is read from its clean run, the others run once per distinct clip."""
    in_pass = {recipient_ids[r]: k for k, r in enumerate(rows)}
    fresh = list(dict.fromkeys(donor_ids[r] for r in rows if donor_ids[r] not in in_pass))
    first_row = {donor_ids[r]: r for r in reversed(rows)}
    states, final = clean.kept, clean.final
    if fresh:
        mels = donor_mels[[first_row[clip] for clip in fresh]].clone().float()
        run_states, run_final = site_states(model.encoder, mels, set(ENCODER_SITES))
        states = {
            site: [torch.cat([a, b]) for a, b in zip(clean.kept[site], run_states[site])] for site in ENCODER_SITES
        }
        final = torch.cat([clean.final, run_final])
    at = [in_pass[donor_ids[r]] if donor_ids[r] in in_pass else len(rows) + fresh.index(donor_ids[r]) for r in rows]
    return {site: [a[at] for a in states[site]] for site in ENCODER_SITES}, final[at]


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
