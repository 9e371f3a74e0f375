"""Activation patching of Whisper's encoder: batched fast paths and plain-hook references.

A patch takes the donor clip's activation at `site` of block s and mixes it into the recipient's run at
the same site of block t: `lerp(recipient, donor, alpha)` on the frames of a window, unchanged elsewhere.
Sites: `resid_pre` (the block's input), `attn_out` and `mlp_out` (what attention and the MLP add to the
residual stream), `block_out` (the block's output, what the original experiments patched).

The original patch (block_out, all 1500 frames, alpha 1) replaces block t's output outright, so the
patched encoder output is `ln_post(blocks[t+1:](donor_state_s))`: it depends on the donor clip, s and t
only; `patched_outputs` runs just the blocks after t, and every diagonal cell (s == t) is the clean run.
Any other patch depends on the recipient too; `run_patched` starts from the recipient's cached input to
block t and runs block t (with the site patched) and the blocks after it, never the blocks before.
"""

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from whisper.model import AudioEncoder, ResidualAttentionBlock

from wpatch.errors import WpatchError


def layer_pairs(n_layer: int, source_layers: list[int] | None = None, target_layers: list[int] | None = None) -> list[tuple[int, int]]:
    """All (source layer, target layer) pairs to patch, checked against the model's depth."""
    sources = list(range(n_layer)) if source_layers is None else list(source_layers)
    targets = list(range(n_layer)) if target_layers is None else list(target_layers)
    for name, layers in (("source", sources), ("target", targets)):
        bad = [layer for layer in layers if not 0 <= layer < n_layer]
        if bad or not layers:
            raise WpatchError(f"{name} layer {bad[0] if bad else '(none)'} is outside the encoder's {n_layer} blocks; use layers 0..{n_layer - 1}")
    return [(s, t) for s in sources for t in targets]


@contextmanager
def output_patch(module: torch.nn.Module, replacement: Tensor):
    """A forward hook that makes `module` return `replacement` (broadcast to its output); always removed on exit."""
    handle = module.register_forward_hook(lambda _m, _i, output: replacement.to(output.dtype).expand_as(output))
    try:
        yield
    finally:
        handle.remove()


def block_outputs(encoder: AudioEncoder, mel: Tensor) -> tuple[list[Tensor], Tensor]:
    """Every encoder block's output (each (B, 1500, d)) and the final encoder output, from one forward pass."""
    states, final = site_states(encoder, mel, {"block_out"})
    return states["block_out"], final


@torch.no_grad()
def hook_patched_output(encoder: AudioEncoder, target_mel: Tensor, source_state: Tensor, target_layer: int) -> Tensor:
    """Reference: the encoder run on `target_mel` with block `target_layer`'s output hooked to `source_state`."""
    with output_patch(encoder.blocks[target_layer], source_state):
        return encoder(target_mel)


@torch.no_grad()
def patched_outputs(encoder: AudioEncoder, states: list[Tensor], clean: Tensor, pairs: list[tuple[int, int]]) -> tuple[Tensor, dict]:
    """Distinct patched encoder outputs for each source clip, batched over clips and layer pairs.

    Returns `features` shaped (B, K, 1500, d) and `index` mapping each (s, t) to its slot k: slot 0 is the
    clean output, shared by every diagonal pair; each off-diagonal pair has its own slot.
    """
    index = {pair: 0 for pair in pairs if pair[0] == pair[1]}
    outputs = [clean]
    for t in sorted({t for _, t in pairs}):
        sources = [s for s, tt in pairs if tt == t and s != t]
        if not sources:
            continue
        x = torch.cat([states[s] for s in sources])  # (len(sources) * B, 1500, d)
        for block in encoder.blocks[t + 1 :]:
            x = block(x)
        x = encoder.ln_post(x)
        for s, chunk in zip(sources, x.chunk(len(sources))):
            index[(s, t)] = len(outputs)
            outputs.append(chunk)
    return torch.stack([o.to(clean.dtype) for o in outputs], dim=1), index


SITES = ("resid_pre", "attn_out", "mlp_out", "block_out")


@dataclass(frozen=True)
class Patch:
    """Where and how much to patch: donor block `source_layer` into recipient block `target_layer` at `site`,
    on frames [start, end), mixed with weight `alpha` (1 = replace)."""

    site: str
    source_layer: int
    target_layer: int
    start: int
    end: int
    alpha: float = 1.0

    def replaces_whole_block(self, n_ctx: int) -> bool:
        """The original patch: block output, every frame, replaced; the recipient then does not matter."""
        return self.site == "block_out" and self.start == 0 and self.end == n_ctx and self.alpha == 1.0


def _site_module(block: ResidualAttentionBlock, site: str) -> torch.nn.Module:
    return {"attn_out": block.attn, "mlp_out": block.mlp, "block_out": block}[site]


def _mix(output, donor: Tensor, weight: Tensor):
    """lerp(output, donor, weight), exact at weights 0 and 1; attention's (out, qk) tuple keeps its qk."""
    if isinstance(output, tuple):
        return (torch.lerp(output[0], donor.to(output[0].dtype), weight.to(output[0].dtype)), *output[1:])
    return torch.lerp(output, donor.to(output.dtype), weight.to(output.dtype))


@contextmanager
def site_patch(block: ResidualAttentionBlock, site: str, donor: Tensor, weight: Tensor):
    """Hook `block` so that `site` becomes lerp(site, donor, weight) (weight: (N, frames, 1)); removed on exit."""
    if site == "resid_pre":
        handle = block.register_forward_pre_hook(lambda _m, args: (_mix(args[0], donor, weight), *args[1:]))
    else:
        handle = _site_module(block, site).register_forward_hook(lambda _m, _i, output: _mix(output, donor, weight))
    try:
        yield
    finally:
        handle.remove()


def window_weights(patches: list[Patch], n_ctx: int, device=None) -> Tensor:
    """(N, n_ctx, 1): each patch's alpha on its window's frames, 0 elsewhere."""
    frames = torch.arange(n_ctx, device=device)
    starts = torch.tensor([p.start for p in patches], device=device)[:, None]
    ends = torch.tensor([p.end for p in patches], device=device)[:, None]
    alphas = torch.tensor([p.alpha for p in patches], device=device)[:, None]
    return (((frames >= starts) & (frames < ends)) * alphas)[..., None]


@torch.no_grad()
def site_states(encoder: AudioEncoder, mel: Tensor, sites: set[str]) -> tuple[dict[str, list[Tensor]], Tensor]:
    """The activations at each of `sites` for every block (site -> list over blocks of (B, frames, d)), and
    the final encoder output, from one forward pass."""
    states: dict[str, list[Tensor]] = {site: [] for site in sites}
    with ExitStack() as stack:
        for block in encoder.blocks:
            if "resid_pre" in sites:
                handle = block.register_forward_pre_hook(lambda _m, args: states["resid_pre"].append(args[0]))
                stack.callback(handle.remove)
            for site in sites - {"resid_pre"}:
                store = states[site]
                handle = _site_module(block, site).register_forward_hook(
                    lambda _m, _i, output, store=store: store.append(output[0] if isinstance(output, tuple) else output))
                stack.callback(handle.remove)
        final = encoder(mel)
    return states, final


@torch.no_grad()
def run_patched(encoder: AudioEncoder, block_input: Tensor, target_layer: int, site: str, donor: Tensor, weight: Tensor) -> Tensor:
    """Encoder output when `site` of block `target_layer` is mixed with `donor`, starting from the recipient's
    cached input to that block (N, frames, d): only that block and the ones after it run."""
    block = encoder.blocks[target_layer]
    with site_patch(block, site, donor, weight):
        x = block(block_input)
    for later in encoder.blocks[target_layer + 1 :]:
        x = later(x)
    return encoder.ln_post(x)


@torch.no_grad()
def hook_patched_run(encoder: AudioEncoder, recipient_mel: Tensor, target_layer: int, site: str, donor: Tensor, weight: Tensor) -> Tensor:
    """Reference: the whole encoder run on `recipient_mel` with the site hooked, as a plain hook would do it."""
    with site_patch(encoder.blocks[target_layer], site, donor, weight):
        return encoder(recipient_mel)
