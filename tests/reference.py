"""Plain-hook references that the fast paths of `wpatch.patching` are tested against (only tests use them)."""

import torch
from torch import Tensor
from whisper.model import AudioEncoder

from wpatch.patching import output_patch, site_patch


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
    with site_patch(encoder.blocks[target_layer], site, donor, weight):
        return encoder(recipient_mel)
