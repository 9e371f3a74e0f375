"""AtP*'s QK fix (arXiv 2403.00745): the attention softmax recomputed, not linearised, for patches that change
queries or keys.

A one-frame patch of an encoder site at frame f changes only frame f of the residual stream until the first
self-attention that reads it (LayerNorm and the MLP act frame by frame): block l's own attention for `resid_pre`
of block l, block l+1's for `attn_out`, `mlp_out` and `block_out` of block l (none for those of the last block:
there the estimate stays AtP's). So that attention's patched query q'_f and key k'_f are exact for every f at once,
by per-frame operations. With A the clean attention pattern of a head, G_i = dM/d(its output at query i, before
the output projection) and S = G V^T (S_ij = G_i . v_j), the change of M through the pattern is

    sum_ij (A'_ij - A_ij) S_ij

where A' is the pattern with q_f, k_f replaced: on rows i != f only logit (i, f) moves, by
d_if = q_i . (k'_f - k_f) / sqrt(d_head), so Z'_i = 1 - A_if + A_if e^d_if and the row changes by
(1/Z'_i - 1)(sum_{j != f} A_ij S_ij) + (A'_if - A_if) S_if (`pattern_change` computes it in a form that neither
overflows nor cancels); row f is recomputed with the softmax. Every (i, f) at once as (heads, T, T) tensors.
The AtP* estimate is AtP's minus the part of it that flows through those queries and keys (the vjp of q_f, k_f
with respect to the site's activation, with the cotangents dM/dq_f, dM/dk_f, dotted with the patch), plus that
exact change. Values, the MLP and every later attention stay linearised, as in AtP*.

The hook kinds it handles are those of `READ_AFTER` (each with its place in `_stream`); a map whose encoder sites
include another kind is refused with `--model.qk_fix` (`check_qk_sites`), never corrected as if it were one of them.
"""

from dataclasses import dataclass

import torch
from torch import Tensor
from whisper.model import AudioEncoder, ResidualAttentionBlock

from wpatch.errors import WpatchError
from wpatch.sites import ATTN_OUT, RESID_PRE, SITES, Hook

# each hook kind the fix handles: how many blocks after the patched one the first self-attention that reads it is
READ_AFTER = {Hook.INPUT: 0, Hook.OUTPUT: 1, Hook.ATTN: 1, Hook.MLP: 1}

ROWS_PER_PASS = 128  # query rows of the (heads, T, T) tensors computed together


@dataclass
class Pattern:
    """One recipient's clean self-attention of one block, per head (heads, T, ...): queries and keys (T, d_head)
    scaled by d_head^-1/4 each as Whisper does, logits L, pattern A, 1 - A, log(A / (1 - A)), S, the row sums
    of A S (`row`, (heads, T, 1)), on each row i and column f `contrast` = S_if - (sum_{j != f} A_ij S_ij) /
    (1 - A_if) (0 at the row's largest entry), and each row's largest entry (`top`, (heads, T, 1)); `grad_q`,
    `grad_k` (T, d): dM/dq and dM/dk."""

    q: Tensor
    k: Tensor
    logits: Tensor
    a: Tensor
    rest_a: Tensor
    log_odds: Tensor
    s: Tensor
    row: Tensor
    contrast: Tensor
    top: Tensor
    grad_q: Tensor
    grad_k: Tensor


def _heads(x: Tensor, n_head: int) -> Tensor:
    """(T, d) -> (heads, T, d_head)."""
    return x.view(x.shape[0], n_head, -1).transpose(0, 1)


@torch.no_grad()
def clean_pattern(block: ResidualAttentionBlock, x: Tensor, grad_out: Tensor) -> Pattern:
    """The pattern of `block`'s self-attention on its input `x` (T, d), with `grad_out` (T, d) = dM/d(attention
    output, after the output projection)."""
    attn = block.attn
    n_head = attn.n_head
    h = block.attn_ln(x)
    scale = (x.shape[-1] // n_head) ** -0.25
    q, k, v = (_heads(proj(h), n_head) for proj in (attn.query, attn.key, attn.value))
    q, k = q * scale, k * scale
    logits = q @ k.transpose(-1, -2)
    a = logits.softmax(-1)
    rest_a = 1 - a
    s = _heads(grad_out @ attn.out.weight, n_head) @ v.transpose(-1, -2)
    row = (a * s).sum(-1, keepdim=True)
    top = a.argmax(-1, keepdim=True)
    contrast = (s - (row - a * s) / rest_a).scatter_(-1, top, 0.0)
    grad_logits = a * (s - row)
    # dM/dq and dM/dk of the unscaled projections: L = (scale q) . (scale k)
    grad_q = (grad_logits @ k * scale).transpose(0, 1).reshape(x.shape)
    grad_k = (grad_logits.transpose(-1, -2) @ q * scale).transpose(0, 1).reshape(x.shape)
    log_odds = logits.log_softmax(-1).sub_(rest_a.log())
    return Pattern(q, k, logits, a, rest_a, log_odds, s, row, contrast, top, grad_q, grad_k)


@torch.no_grad()
def pattern_change(p: Pattern, delta_q: Tensor, delta_k: Tensor) -> Tensor:
    """(T,): for each frame f, sum over heads and ij of (A'_ij - A_ij) S_ij when frame f's query and key (alone)
    move by `delta_q[f]`, `delta_k[f]` ((heads, T, d_head), scaled as `Pattern.q`). Exactly 0 where both are 0.

    Row i != f, where only logit (i, f) moves (by d): A'_if = sigmoid(d + log(A_if / (1 - A_if))), the rest of
    the row scaled by (1 - A'_if) / (1 - A_if), so the row changes by (A'_if - A_if) `contrast`_if, with
    A'_if - A_if = A'_if (1 - A_if) (1 - e^-d) = -A_if (1 - A'_if) (1 - e^d) (the form that cannot overflow,
    exact at d = 0). Where A_if is the row's largest entry (it may round to 1 and the rest of the row to 0), row
    i is recomputed with the softmax instead: one (heads, T, T) pass for all of them. Row f: recomputed."""
    total = torch.zeros(p.q.shape[1], device=p.q.device)
    own_key = ((p.q + delta_q) * delta_k).sum(-1)  # (heads, T): row f's logit at its own new key
    for start in range(0, p.q.shape[1], ROWS_PER_PASS):  # rows i (and f) a slice at a time: it stays in cache
        i = slice(start, start + ROWS_PER_PASS)
        d = p.q[:, i] @ delta_k.transpose(-1, -2)  # d[h, i, f]: logit (i, f) moved by frame f's new key
        top = p.top[:, i]
        at_top, rising = d.gather(-1, top), d >= 0
        moved = (d + p.log_odds[:, i]).sigmoid_()  # A'_if
        rows = torch.where(rising, moved.mul(p.rest_a[:, i]).neg_(), moved.neg_().add_(1).mul_(p.a[:, i]))
        rows.mul_(d.abs_().neg_().expm1_()).mul_(p.contrast[:, i])  # (A'_if - A_if) contrast_if
        top_rows = p.logits[:, i].scatter_add(-1, top, at_top).softmax(-1).mul_(p.s[:, i]).sum(-1, keepdim=True)
        rows.scatter_(-1, top, top_rows.sub_(p.row[:, i]))
        rows.diagonal(start, dim1=-2, dim2=-1).zero_()  # row f is recomputed whole below
        total += rows.sum((0, 1))
        row_logits = torch.baddbmm(p.logits[:, i], delta_q[:, i], p.k.transpose(-1, -2))  # row f: new query ...
        row_logits.diagonal(start, dim1=-2, dim2=-1).add_(own_key[:, i])  # ... and its own new key
        total[i] += row_logits.softmax(-1).mul_(p.s[:, i]).sum(-1).sub_(p.row[:, i, 0]).sum(0)
    return total


def check_qk_sites() -> None:
    """Refuse `--model.qk_fix` when an encoder site of the map (every Whisper encoder site of `wpatch.sites`) has a
    hook kind the fix does not handle."""
    for site in SITES.values():
        if site.stack == "encoder" and site.whisper and site.hook not in READ_AFTER:
            raise WpatchError(
                f"--model.qk_fix cannot correct the attribution map's site {site.name} (hook kind "
                f"{site.hook.name}): it handles {', '.join(h.name for h in READ_AFTER)}; run the map without "
                "--model.qk_fix"
            )


def reader(site: str, layer: int) -> int:
    """The block whose self-attention first reads a one-frame patch of `site` of block `layer`."""
    return layer + READ_AFTER[SITES[site].hook]


def _stream(encoder: AudioEncoder, site: str, layer: int, kept: dict[str, list[Tensor]], a: Tensor) -> Tensor:
    """The residual stream entering the reading attention (T, d), frame by frame, when `site` of block `layer`
    holds `a` (T, d); `kept`: the recipient's activations (site -> per block (T, d))."""
    hook = SITES[site].hook
    if hook.is_stream:
        return a
    if hook is Hook.MLP:
        return kept[RESID_PRE.name][layer] + kept[ATTN_OUT.name][layer] + a
    if hook is Hook.ATTN:
        block = encoder.blocks[layer]
        middle = kept[RESID_PRE.name][layer] + a
        return middle + block.mlp(block.mlp_ln(middle))
    raise ValueError(f"the QK fix has no stream for hook kind {hook.name} (check_qk_sites refuses it)")


def site_correction(
    encoder: AudioEncoder, p: Pattern, site: str, layer: int, kept: dict[str, list[Tensor]], donor: Tensor
) -> Tensor:
    """(T,): AtP* - AtP of the one-frame patch of `site` of block `layer` with `donor` (T, d) at each frame:
    the exact change through the reading attention's pattern minus its linearisation."""
    block = encoder.blocks[reader(site, layer)]
    n_head = block.attn.n_head
    scale = (donor.shape[-1] // n_head) ** -0.25
    clean = kept[site][layer].detach().requires_grad_()
    h = block.attn_ln(_stream(encoder, site, layer, kept, clean))
    q, k = block.attn.query(h), block.attn.key(h)
    through_qk = torch.autograd.grad((q, k), clean, (p.grad_q, p.grad_k))[0]
    linear = (through_qk * (donor - clean.detach())).sum(-1)
    with torch.no_grad():
        h = block.attn_ln(_stream(encoder, site, layer, kept, donor))
        delta_q, delta_k = (
            _heads(proj(h) - old.detach(), n_head) * scale for proj, old in ((block.attn.query, q), (block.attn.key, k))
        )
        return pattern_change(p, delta_q, delta_k) - linear.detach()


def qk_correction(
    encoder: AudioEncoder,
    sites: tuple[str, ...],
    kept: dict[str, list[Tensor]],
    donor_states: dict[str, list[Tensor]],
    grads: dict[str, list[Tensor]],
) -> Tensor:
    """(N, sites, blocks, T): AtP* - AtP of every one-frame patch (donor row n into recipient row n), zero where no
    attention reads the patch within the encoder. `kept`, `donor_states`, `grads`: the recipients' activations,
    the donors' and dM/d(recipient activation), site -> per block (N, T, d), with `resid_pre` and `attn_out`
    among the sites. Patches of the same stream (`block_out` of block l, `resid_pre` of block l+1) are computed
    once."""
    first = kept[sites[0]][0]
    n_layer = len(encoder.blocks)
    out = torch.zeros(first.shape[0], len(sites), n_layer, first.shape[1], device=first.device)
    cells = [(i, site, layer) for i, site in enumerate(sites) for layer in range(n_layer)]
    for row in range(first.shape[0]):
        mine = {site: [a[row] for a in kept[site]] for site in kept}
        for m in range(n_layer):
            p = clean_pattern(encoder.blocks[m], mine[RESID_PRE.name][m], grads[ATTN_OUT.name][m][row])
            done = {}
            for i, site, layer in cells:
                if reader(site, layer) == m:
                    same = ("stream",) if SITES[site].hook.is_stream else (site,)
                    if same not in done:
                        done[same] = site_correction(encoder, p, site, layer, mine, donor_states[site][layer][row])
                    out[row, i, layer] = done[same]
    return out
