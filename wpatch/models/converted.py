"""The ending both readers of another format's weights share (`ctranslate2`, `huggingface`), once their tensors are
read and renamed: openai-whisper's `Whisper` of the read dimensions holding exactly the converted state dict (every
parameter, none other; stored fp16 / bf16 values widened to fp32 exactly), a stored output projection checked to be
the token embedding (openai-whisper ties them), the alignment heads the files name marked, in eval mode."""

from pathlib import Path

import torch
from torch import Tensor
from whisper.model import ModelDimensions, Whisper

from wpatch.errors import WpatchError


def converted_whisper(
    directory: Path,
    dims: ModelDimensions,
    state: dict[str, Tensor],
    projection: tuple[str, Tensor | None],
    alignment_heads: list | None,
) -> Whisper:
    """An fp32 openai-whisper model of `dims` in eval mode holding `state`; `projection`: the stored output
    projection's name and tensor (None: not stored), refused unless it equals the token embedding; `alignment_heads`:
    the (decoder layer, head) pairs the folder names (None: openai-whisper's default, none marked)."""
    name, weights = projection
    if weights is not None and not torch.equal(weights, state["decoder.token_embedding.weight"]):
        raise WpatchError(
            f"{directory}: the checkpoint has an output projection ({name}) different from the token embedding, "
            "which openai-whisper ties; only tied Whisper checkpoints load"
        )
    model = Whisper(dims)
    model.load_state_dict(state, strict=True)
    if alignment_heads:
        mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
        for layer, head in alignment_heads:
            mask[layer, head] = True
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return model.eval()
