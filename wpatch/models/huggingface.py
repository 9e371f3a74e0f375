"""Read a Hugging Face transformers Whisper checkpoint (a `save_pretrained` folder, or a hub id from the local
Hugging Face cache, downloaded when online) into openai-whisper's `Whisper`, exactly, without transformers.

A folder holds config.json and the weights: model.safetensors or pytorch_model.bin, or shards listed in
model.safetensors.index.json / pytorch_model.bin.index.json. Parameter names are mapped one to one
(`name_map`); stored fp16 / bf16 values are widened to fp32 exactly.
"""

import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import torch
from whisper.model import ModelDimensions, Whisper

from wpatch.atomic import atomic_path
from wpatch.errors import WpatchError
from wpatch.models.ctranslate2 import set_alignment_heads

WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # preferred first, as transformers reads them
DIMENSIONS = {  # openai-whisper dimension -> transformers config key
    "n_mels": "num_mel_bins",
    "n_audio_ctx": "max_source_positions",
    "n_audio_state": "d_model",
    "n_audio_head": "encoder_attention_heads",
    "n_audio_layer": "encoder_layers",
    "n_vocab": "vocab_size",
    "n_text_ctx": "max_target_positions",
    "n_text_state": "d_model",
    "n_text_head": "decoder_attention_heads",
    "n_text_layer": "decoder_layers",
}
VOCABULARIES = (51864, 51865, 51866)  # English-only, multilingual, large-v3: each has its openai-whisper tokenizer
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_checkpoint(directory: Path) -> bool:
    """Whether a folder looks like a transformers checkpoint (config.json and weights or a weight index)."""
    return (directory / "config.json").exists() and any(
        (directory / name).exists() or (directory / f"{name}.index.json").exists() for name in WEIGHTS
    )


def read_config(directory: Path) -> dict:
    """config.json of a Whisper checkpoint, refused (one line) when it is not one."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise WpatchError(f"{directory}: unreadable config.json ({type(error).__name__}); re-save the model") from None
    kind = config.get("model_type")
    if kind != "whisper":
        raise WpatchError(
            f"{directory}: config.json says model_type {kind!r}, not 'whisper'; point --model.model at a Whisper "
            "checkpoint"
        )
    if config.get("activation_function", "gelu") != "gelu" or config.get("scale_embedding", False):
        raise WpatchError(
            f"{directory}: a Whisper variant openai-whisper cannot represent (activation "
            f"{config.get('activation_function')!r}, scale_embedding {config.get('scale_embedding')}); use a "
            "standard Whisper checkpoint"
        )
    missing = [key for key in DIMENSIONS.values() if key not in config]
    if missing:
        raise WpatchError(f"{directory}: config.json lacks {missing[0]}, which a Whisper config has; re-save the model")
    if config["vocab_size"] not in VOCABULARIES:
        raise WpatchError(
            f"{directory}: vocabulary of {config['vocab_size']} tokens, none of openai-whisper's tokenizers "
            f"({', '.join(map(str, VOCABULARIES))}); a fine-tune with added tokens is not supported"
        )
    width = 4 * config["d_model"]
    if {config.get("encoder_ffn_dim", width), config.get("decoder_ffn_dim", width)} != {width}:
        raise WpatchError(
            f"{directory}: feed-forward width is not 4 x d_model, which openai-whisper assumes; not supported"
        )
    return config


def dimensions(config: dict) -> ModelDimensions:
    """openai-whisper dimensions of a transformers Whisper config."""
    return ModelDimensions(**{dim: config[key] for dim, key in DIMENSIONS.items()})


def _block(prefix: str, src: str, cross: bool) -> dict[str, str]:
    names = {}
    parts = [("attn", "self_attn", "attn_ln", "self_attn_layer_norm")]
    if cross:
        parts.append(("cross_attn", "encoder_attn", "cross_attn_ln", "encoder_attn_layer_norm"))
    for attn, hf_attn, ln, hf_ln in parts:
        for proj, hf_proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"), ("out", "out_proj")):
            names[f"{prefix}.{attn}.{proj}.weight"] = f"{src}.{hf_attn}.{hf_proj}.weight"
            if proj != "key":  # openai-whisper's and transformers' key projections have no bias
                names[f"{prefix}.{attn}.{proj}.bias"] = f"{src}.{hf_attn}.{hf_proj}.bias"
        names.update({f"{prefix}.{ln}.{p}": f"{src}.{hf_ln}.{p}" for p in ("weight", "bias")})
    for index, fc in ((0, "fc1"), (2, "fc2")):
        names.update({f"{prefix}.mlp.{index}.{p}": f"{src}.{fc}.{p}" for p in ("weight", "bias")})
    names.update({f"{prefix}.mlp_ln.{p}": f"{src}.final_layer_norm.{p}" for p in ("weight", "bias")})
    return names


def name_map(n_audio_layer: int, n_text_layer: int) -> dict[str, str]:
    """openai-whisper state-dict key -> transformers `WhisperModel` key (without the `model.` prefix)."""
    names = {f"encoder.{c}.{p}": f"encoder.{c}.{p}" for c in ("conv1", "conv2") for p in ("weight", "bias")}
    names["encoder.positional_embedding"] = "encoder.embed_positions.weight"
    for i in range(n_audio_layer):
        names.update(_block(f"encoder.blocks.{i}", f"encoder.layers.{i}", cross=False))
    names.update({f"encoder.ln_post.{p}": f"encoder.layer_norm.{p}" for p in ("weight", "bias")})
    names["decoder.token_embedding.weight"] = "decoder.embed_tokens.weight"
    names["decoder.positional_embedding"] = "decoder.embed_positions.weight"
    for i in range(n_text_layer):
        names.update(_block(f"decoder.blocks.{i}", f"decoder.layers.{i}", cross=True))
    names.update({f"decoder.ln.{p}": f"decoder.layer_norm.{p}" for p in ("weight", "bias")})
    return names


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder, by its transformers name, in its stored dtype; shards are read from
    the index, and a shard the index lists but the folder lacks is refused."""
    for name in WEIGHTS:
        index = directory / f"{name}.index.json"
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [s for s in shards if not (directory / s).exists()]
            if missing:
                raise WpatchError(
                    f"{directory}: shard {missing[0]} listed in {index.name} is missing ({len(missing)} of "
                    f"{len(shards)} missing); copy or download the whole checkpoint"
                )
            return {k: v for shard in shards for k, v in _read_file(directory / shard).items()}
        if (directory / name).exists():
            return _read_file(directory / name)
    raise WpatchError(f"{directory}: config.json but no {' or '.join(WEIGHTS)} (or index); re-save the model")


def convert(config: dict, weights: dict[str, torch.Tensor]) -> tuple[ModelDimensions, dict[str, torch.Tensor]]:
    """openai-whisper dims and state dict from a transformers config and its tensors (any dtype kept). Refused:
    a missing tensor, a tensor with no counterpart, and an output projection not tied to the token embedding."""
    dims = dimensions(config)
    prefix = "model." if any(k.startswith("model.") for k in weights) else ""
    names = name_map(dims.n_audio_layer, dims.n_text_layer)
    missing = [hf for hf in names.values() if prefix + hf not in weights]
    if missing:
        raise WpatchError(f"checkpoint lacks {prefix}{missing[0]} ({len(missing)} tensors missing); re-save the model")
    state = {key: weights[prefix + hf] for key, hf in names.items()}
    projection = weights.get("proj_out.weight")
    if projection is not None and not torch.equal(projection, state["decoder.token_embedding.weight"]):
        raise WpatchError(
            "checkpoint has an output projection (proj_out) different from the token embedding, which "
            "openai-whisper ties; only tied Whisper checkpoints load"
        )
    known = {prefix + hf for hf in names.values()} | {"proj_out.weight"}
    unused = sorted(k for k in weights if k not in known)
    if unused:
        raise WpatchError(f"checkpoint has tensors with no openai-whisper counterpart: {unused[:3]}; not supported")
    return dims, state


def load_huggingface(directory: str | Path) -> Whisper:
    """An openai-whisper model (fp32) holding exactly the weights of a transformers Whisper checkpoint folder."""
    directory = Path(directory)
    dims, state = convert(read_config(directory), read_weights(directory))
    model = Whisper(dims)
    model.load_state_dict(state, strict=True)
    generation = directory / "generation_config.json"
    if generation.exists():
        set_alignment_heads(model, json.loads(generation.read_text()).get("alignment_heads"))
    return model.eval()


def hub_cache() -> Path:
    """The Hugging Face hub cache, where transformers and huggingface_hub keep downloaded models."""
    if os.getenv("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.getenv("HF_HOME") or Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home) / "hub"


def cached_snapshot(repo: str) -> Path | None:
    """The cached snapshot of hub model `repo` (its `main` ref, else its only snapshot), if it holds weights."""
    root = hub_cache() / f"models--{repo.replace('/', '--')}"
    ref = root / "refs" / "main"
    if ref.exists():
        candidates = [root / "snapshots" / ref.read_text().strip()]
    else:
        candidates = sorted((root / "snapshots").glob("*"))[:1] if (root / "snapshots").is_dir() else []
    return next((c for c in candidates if is_checkpoint(c)), None)


def _endpoint() -> str:
    return os.getenv("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _fetch(repo: str, name: str, target: Path) -> bool:
    """Download one file of hub model `repo` into `target` (atomically); False if the hub has no such file."""
    try:
        with urllib.request.urlopen(f"{_endpoint()}/{repo}/resolve/main/{name}", timeout=30) as response:
            with atomic_path(target) as partial, open(partial, "wb") as out:
                while chunk := response.read(1 << 22):
                    out.write(chunk)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return False
        raise WpatchError(
            f"model {repo!r}: the hub answered {error.code} for {name}; check the id and access"
        ) from None
    return True


def download(repo: str) -> Path:
    """Download hub model `repo`'s config and weights (not its tokenizer: openai-whisper's is used) into the
    Hugging Face cache, as a snapshot named `main`; refused in one line when the hub is unreachable."""
    snapshot = hub_cache() / f"models--{repo.replace('/', '--')}" / "snapshots" / "main"
    try:
        urllib.request.urlopen(f"{_endpoint()}/{repo}/resolve/main/config.json", timeout=5).close()
    except urllib.error.HTTPError as error:
        raise WpatchError(
            f"model {repo!r}: not on the hub ({error.code}); check the id, or pass a checkpoint folder"
        ) from None
    except (urllib.error.URLError, OSError):
        raise WpatchError(
            f"model {repo!r}: no such folder, not in the Hugging Face cache ({hub_cache()}) and {_endpoint()} is "
            f"unreachable; download it where there is internet (huggingface-cli download {repo}) and copy the "
            "cache here, "
            "or pass a checkpoint folder"
        ) from None
    snapshot.mkdir(parents=True, exist_ok=True)
    _fetch(repo, "config.json", snapshot / "config.json")
    _fetch(repo, "generation_config.json", snapshot / "generation_config.json")
    for name in WEIGHTS:
        if _fetch(repo, f"{name}.index.json", snapshot / f"{name}.index.json"):
            index = json.loads((snapshot / f"{name}.index.json").read_text())
            for shard in sorted(set(index["weight_map"].values())):
                _fetch(repo, shard, snapshot / shard)
            break
        if _fetch(repo, name, snapshot / name):
            break
    (snapshot.parent.parent / "refs").mkdir(exist_ok=True)
    (snapshot.parent.parent / "refs" / "main").write_text("main")
    if not is_checkpoint(snapshot):
        raise WpatchError(f"model {repo!r}: the hub has no {' or '.join(WEIGHTS)} for it; not a Whisper checkpoint")
    return snapshot


def hub_directory(repo: str) -> Path:
    """The local folder of hub model `repo`: the cached snapshot, else a download."""
    return cached_snapshot(repo) or download(repo)
