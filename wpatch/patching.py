"""Whole-block activation patching of Whisper's encoder: a batched fast path and the plain-hook reference.

Patch (s, t) replaces the output of encoder block t, at all 1500 positions, by the source clip's output
of block s (what the original experiments did with a forward hook). The patched encoder output is then
`ln_post(blocks[t+1:](source_state_s))`: it depends on the source clip, s and t only, so the fast path
runs just the blocks after t on cached source states, and every diagonal cell (s == t) is the clean
encoder output of the source clip.
"""

from contextlib import contextmanager

import torch
from torch import Tensor
from whisper.model import AudioEncoder

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


@torch.no_grad()
def block_outputs(encoder: AudioEncoder, mel: Tensor) -> tuple[list[Tensor], Tensor]:
    """Every encoder block's output (each (B, 1500, d)) and the final encoder output, from one forward pass."""
    states: list[Tensor] = []
    handles = [block.register_forward_hook(lambda _m, _i, output: states.append(output)) for block in encoder.blocks]
    try:
        final = encoder(mel)
    finally:
        for handle in handles:
            handle.remove()
    return states, final


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
