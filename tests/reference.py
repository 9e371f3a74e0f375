"""Plain-hook references that the fast paths of `wpatch.patching.encoder` are tested against (only tests use them)."""

from contextlib import contextmanager

import torch
from torch import Tensor
from whisper.model import AudioEncoder, Whisper

from wpatch.benchmark import output_patch  # the original's plain hook, its baseline's too


@contextmanager
def encoder_site_hook(block, site: str, donor: Tensor, weight: Tensor):
    """A plain hook on openai-whisper's encoder `block`: `site` becomes (1 - weight) * site + weight * donor, written
    here from the modules' own names (not wpatch's site registry): resid_pre is the block's input, attn_out and
    mlp_out what `block.attn` (its output's first element) and `block.mlp` return, block_out the block's output."""

    def blend(value: Tensor) -> Tensor:
        return ((1 - weight) * value.float() + weight * donor.float()).to(value.dtype)

    if site == "resid_pre":
        handle = block.register_forward_pre_hook(lambda _m, args: (blend(args[0]), *args[1:]))
    elif site == "attn_out":
        handle = block.attn.register_forward_hook(lambda _m, _i, out: (blend(out[0]), *out[1:]))
    else:
        module = {"mlp_out": block.mlp, "block_out": block}[site]
        handle = module.register_forward_hook(lambda _m, _i, out: blend(out))
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def reference_whole_block_output(
    encoder: AudioEncoder, target_mel: Tensor, source_state: Tensor, target_layer: int
) -> Tensor:
    """The encoder run on `target_mel` with block `target_layer`'s output hooked to `source_state`."""
    with output_patch(encoder.blocks[target_layer], source_state):
        return encoder(target_mel)


@torch.no_grad()
def reference_patched_run(
    encoder: AudioEncoder, recipient_mel: Tensor, target_layer: int, site: str, donor: Tensor, weight: Tensor
) -> Tensor:
    """The whole encoder run on `recipient_mel` with the site hooked, as a plain hook would do it."""
    with encoder_site_hook(encoder.blocks[target_layer], site, donor, weight):
        return encoder(recipient_mel)


def _at_positions(values: Tensor, offset: int, length: int) -> Tensor:
    part = values[:, offset : offset + length]
    return torch.nn.functional.pad(part, (0, 0, 0, length - part.shape[1]))


def _decoder_module(block, site: str) -> torch.nn.Module:
    """The openai-whisper module whose output is a dec_* site of decoder `block`."""
    return {
        "dec_resid": block,
        "dec_attn_out": block.attn,
        "dec_cross_out": block.cross_attn,
        "dec_mlp_out": block.mlp,
    }[site]


@contextmanager
def decoder_site_hook(model: Whisper, block: int, site: str, donor: Tensor, weight: Tensor):
    """Plain hooks on openai-whisper's decoder modules: `site` of decoder block `block` becomes
    lerp(site, donor, weight). dec_* sites: donor (N, P, d) and weight (N, P, 1) by absolute token position (found
    the way `TextDecoder.forward` finds it, from its kv cache), so full and cached calls alike are patched;
    enc_to_dec: donor (N, 1500, d) and weight (N, 1500, 1) replace the encoder output block `block` reads."""
    offset = [0]

    def track(_module, _args, kwargs):
        kv_cache = kwargs.get("kv_cache")
        offset[0] = next(iter(kv_cache.values())).shape[1] if kv_cache else 0

    def mix(value):
        t = value.shape[1]
        return torch.lerp(value, _at_positions(donor, offset[0], t), _at_positions(weight, offset[0], t))

    target = model.decoder.blocks[block]
    handles = [model.decoder.register_forward_pre_hook(track, with_kwargs=True)]
    if site == "enc_to_dec":
        handles.append(
            target.cross_attn.register_forward_pre_hook(
                lambda _m, args: (args[0], torch.lerp(args[1], donor, weight), *args[2:])
            )
        )
    else:
        module = _decoder_module(target, site)
        handles.append(
            module.register_forward_hook(
                lambda _m, _i, out: (mix(out[0]), *out[1:]) if isinstance(out, tuple) else mix(out)
            )
        )
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def reference_decoder_site(model: Whisper, tokens: Tensor, features: Tensor, block: int, site: str) -> Tensor:
    """The activation (N, T, d) at `site` of decoder block `block` in openai-whisper's teacher-forced decoder run
    on `tokens` (N, T) over encoder outputs `features`, read with a plain forward hook."""
    module = _decoder_module(model.decoder.blocks[block], site)
    seen = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        model.decoder(tokens, features)
    finally:
        handle.remove()
    return seen[0]
