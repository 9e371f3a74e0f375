"""Activation patching of Whisper's encoder: the engine that turns a batch's patched runs into encoder outputs.

`encode_plan` is the one entry point: given the clips' log-mels and every `PatchedRun` a batch needs, it runs
each clip's clean encoder once (capturing the activations the patches read) and returns every distinct encoder
output, clean and patched, stacked, with the row of each. The plain-hook references that the fast paths are
tested against live in tests/reference.py.

A patch takes the donor clip's activation at `site` of block s and mixes it into the recipient's run at
the same site of block t: `lerp(recipient, donor, alpha)` on the frames of a window, unchanged elsewhere.
Sites: `resid_pre` (the block's input), `attn_out` and `mlp_out` (what attention and the MLP add to the
residual stream), `block_out` (the block's output, what the original experiments patched).

The original patch (block_out, all 1500 frames, alpha 1) replaces block t's output outright, so the
patched encoder output is `ln_post(blocks[t+1:](donor_state_s))`: it depends on the donor clip, s and t
only; the fast path `fast_whole_block_outputs` runs just the blocks after t, and every diagonal cell (s == t)
is the clean run. Any other patch depends on the recipient too; the fast path `fast_patched_run` starts from
the recipient's cached input to block t and runs block t (with the site patched) and the blocks after it,
never the blocks before.
"""

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.profiler import record_function
from whisper.model import AudioEncoder, ResidualAttentionBlock

from wpatch.errors import WpatchError
from wpatch.sites import BLOCK_OUT, RESID_PRE, SITES, Hook

MAX_ROWS_PER_PASS = 64  # patched encoder runs batched together (bounds activation memory)


def layer_pairs(
    n_layer: int, source_layers: list[int] | None = None, target_layers: list[int] | None = None, stack="encoder"
) -> list[tuple[int, int]]:
    """All (source layer, target layer) pairs to patch, checked against the depth of the `stack` (encoder or
    decoder) they index."""
    sources = list(range(n_layer)) if source_layers is None else list(source_layers)
    targets = list(range(n_layer)) if target_layers is None else list(target_layers)
    for name, layers in (("source", sources), ("target", targets)):
        bad = [layer for layer in layers if not 0 <= layer < n_layer]
        if bad or not layers:
            raise WpatchError(
                f"{name} layer {bad[0] if bad else '(none)'} is outside the {stack}'s {n_layer} blocks; use layers "
                f"0..{n_layer - 1}"
            )
    return [(s, t) for s in sources for t in targets]


@torch.no_grad()
def fast_whole_block_outputs(
    encoder: AudioEncoder, states: list[Tensor], clean: Tensor, layer_pairs: list[tuple[int, int]]
) -> tuple[Tensor, dict]:
    """Fast path of the whole-block patch: distinct patched encoder outputs for each donor clip, batched over
    clips and layer pairs (`states`: the donors' block outputs, `clean`: their clean encoder outputs).

    Returns `features` shaped (B, K, 1500, d) and `index` mapping each (s, t) to its slot k: slot 0 is the
    clean output, shared by every diagonal pair; each off-diagonal pair has its own slot.
    """
    index = {pair: 0 for pair in layer_pairs if pair[0] == pair[1]}
    outputs = [clean]
    for t in sorted({t for _, t in layer_pairs}):
        sources = [s for s, tt in layer_pairs if tt == t and s != t]
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
        return SITES[self.site].replaces_stream and self.start == 0 and self.end == n_ctx and self.alpha == 1.0


def site_module(block: ResidualAttentionBlock, site: str) -> torch.nn.Module:
    """The module whose output an encoder site is (the block itself for its output)."""
    module = SITES[site].hook.module
    return block if module is None else getattr(block, module)


def mix(output, donor: Tensor, weight: Tensor):
    """lerp(output, donor, weight): how every patch, encoder or decoder, mixes donor into recipient. Computed in
    float32 (alpha exact under mixed precision), exact at weights 0 and 1; attention's (out, qk) tuple keeps its
    qk."""
    if isinstance(output, tuple):
        return (mix(output[0], donor, weight), *output[1:])
    return torch.lerp(output.float(), donor.float(), weight.float()).to(output.dtype)


@contextmanager
def site_patch(block: ResidualAttentionBlock, site: str, donor: Tensor, weight: Tensor):
    """Hook `block` so that `site` becomes lerp(site, donor, weight) (weight: (N, frames, 1)); removed on exit."""
    if SITES[site].hook is Hook.INPUT:
        handle = block.register_forward_pre_hook(lambda _m, args: (mix(args[0], donor, weight), *args[1:]))
    else:
        handle = site_module(block, site).register_forward_hook(lambda _m, _i, output: mix(output, donor, weight))
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


def site_states(encoder: AudioEncoder, mel: Tensor, sites: set[str]) -> tuple[dict[str, list[Tensor]], Tensor]:
    """The activations at each of `sites` for every block (site -> list over blocks of (B, frames, d)), and
    the final encoder output, from one forward pass (in the graph if the caller's context records one)."""
    states: dict[str, list[Tensor]] = {site: [] for site in sites}
    with ExitStack() as stack:
        for block in encoder.blocks:
            for site in sites:
                store = states[site]
                if SITES[site].hook is Hook.INPUT:
                    handle = block.register_forward_pre_hook(lambda _m, args, store=store: store.append(args[0]))
                else:
                    handle = site_module(block, site).register_forward_hook(
                        lambda _m, _i, output, store=store: store.append(
                            output[0] if isinstance(output, tuple) else output
                        )
                    )
                stack.callback(handle.remove)
        final = encoder(mel)
    return states, final


@torch.no_grad()
def fast_patched_run(
    encoder: AudioEncoder, block_input: Tensor, target_layer: int, site: str, donor: Tensor, weight: Tensor
) -> Tensor:
    """Fast path of any patch: the encoder output when `site` of block `target_layer` is mixed with `donor`,
    starting from the recipient's cached input to that block (N, frames, d): only that block and the ones after
    it run."""
    block = encoder.blocks[target_layer]
    with site_patch(block, site, donor, weight):
        x = block(block_input)
    for later in encoder.blocks[target_layer + 1 :]:
        x = later(x)
    return encoder.ln_post(x)


@dataclass(frozen=True)
class PatchedRun:
    """One patched run: `patch` applied to the recipient clip's run with the donor clip's activations; for the
    decoder sites (`wpatch.patching.decoder`), `donor_tokens` are the tokens the donor run is teacher-forced on."""

    recipient_clip: int
    donor_clip: int
    patch: Patch
    donor_tokens: tuple[int, ...] = ()


@dataclass
class EncoderOutputs:
    """Every distinct encoder output a batch needs, stacked in `features` (N, n_ctx, d): each clip's clean output
    at row `clean[clip]`, each patched run's at row `patched[run]` (whole-block runs that differ only in their
    recipient share one row)."""

    features: Tensor
    clean: dict[int, int]
    patched: dict[PatchedRun, int]


def sites_to_capture(runs: list[PatchedRun], n_ctx: int) -> set[str]:
    """The activations the clean runs must keep: block outputs (the whole-block fast path reads them), the sites
    other patches read, and the blocks' inputs where those patches start."""
    general = {run.patch.site for run in runs if not run.patch.replaces_whole_block(n_ctx)}
    return {BLOCK_OUT.name} | general | ({RESID_PRE.name} if general else set())


@torch.no_grad()
def encode_plan(
    encoder: AudioEncoder, mels: dict[int, Tensor], runs: list[PatchedRun], clean_clips: set[int]
) -> EncoderOutputs:
    """The clean output of every clip in `clean_clips` and of every donor, and the output of every patched run.

    Rows: the clean runs first (clips in increasing order), then the whole-block patches (by donor, then layer
    pair; computed by `fast_whole_block_outputs`), then the other patches (grouped by site and target layer in
    the order `runs` first asks for them, at most `MAX_ROWS_PER_PASS` per pass of `fast_patched_run`).
    `mels`: clip -> its log-mel (n_mels, 3000).
    """
    n_ctx = encoder.positional_embedding.shape[0]
    clips = sorted(set(clean_clips) | {run.donor_clip for run in runs} | {run.recipient_clip for run in runs})
    position = {clip: i for i, clip in enumerate(clips)}
    with record_function("wpatch.encoder.clean"):
        states, clean = site_states(encoder, torch.stack([mels[clip] for clip in clips]), sites_to_capture(runs, n_ctx))
    with record_function("wpatch.encoder.patched"):
        features, whole_rows, general_rows = [clean], {}, {}
        whole = [run for run in runs if run.patch.replaces_whole_block(n_ctx)]
        if whole:
            donors = sorted({run.donor_clip for run in whole})
            layer_pairs = sorted({(run.patch.source_layer, run.patch.target_layer) for run in whole})
            rows_of = torch.tensor([position[clip] for clip in donors], device=clean.device)
            patched, slot = fast_whole_block_outputs(
                encoder, [state[rows_of] for state in states[BLOCK_OUT.name]], clean[rows_of], layer_pairs
            )
            offset = sum(len(f) for f in features)
            features.append(patched.flatten(0, 1))
            for i, donor in enumerate(donors):
                for pair in layer_pairs:
                    whole_rows[donor, pair] = offset + i * patched.shape[1] + slot[pair]
        todo: dict[tuple[str, int], dict[PatchedRun, None]] = {}
        for run in runs:
            if not run.patch.replaces_whole_block(n_ctx):
                todo.setdefault((run.patch.site, run.patch.target_layer), {})[run] = None
        for (site, t), distinct in todo.items():
            distinct = list(distinct)
            for chunk in range(0, len(distinct), MAX_ROWS_PER_PASS):
                part = distinct[chunk : chunk + MAX_ROWS_PER_PASS]
                block_input = states[RESID_PRE.name][t][[position[run.recipient_clip] for run in part]]
                donor = torch.stack([states[site][run.patch.source_layer][position[run.donor_clip]] for run in part])
                weight = window_weights([run.patch for run in part], n_ctx, clean.device)
                offset = sum(len(f) for f in features)
                features.append(fast_patched_run(encoder, block_input, t, site, donor, weight))
                general_rows.update({run: offset + i for i, run in enumerate(part)})
    patched_rows = {
        run: whole_rows[run.donor_clip, (run.patch.source_layer, run.patch.target_layer)]
        if run.patch.replaces_whole_block(n_ctx)
        else general_rows[run]
        for run in runs
    }
    return EncoderOutputs(torch.cat([f.to(clean.dtype) for f in features]), position, patched_rows)
