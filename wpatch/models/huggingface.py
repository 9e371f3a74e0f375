"""Read a Hugging Face transformers Whisper checkpoint (a `save_pretrained` folder, or a hub id from the local
Hugging Face cache, downloaded when online) into openai-whisper's `Whisper`, exactly, without transformers.

A folder holds config.json and the weights: model.safetensors or pytorch_model.bin, or shards listed in
model.safetensors.index.json / pytorch_model.bin.index.json. Parameter names are mapped one to one
(`name_map`); stored fp16 / bf16 values are widened to fp32 exactly. The whole folder is checked before any
tensor data is read (`check_checkpoint`: config.json, the index, every weight file's header, each tensor's shape
against config.json); each problem is one line naming the file and the key.
"""

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import torch
from whisper.audio import N_FRAMES
from whisper.model import ModelDimensions, Whisper

from wpatch.atomic import atomic_path
from wpatch.errors import WpatchError
from wpatch.models import wav2vec2
from wpatch.models.converted import converted_whisper
from wpatch.models.weight_files import (
    WEIGHTS,
    Stored,
    read_index,
    read_json,
    read_tensors,
    shown,
    stored_tensors,
    weight_files,
)

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
LARGEST = 1 << 16  # no Whisper dimension comes near (the largest: 51866 tokens); a bound for hostile configs
PROCESSOR_FILES = ("vocab.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_checkpoint(directory: Path) -> bool:
    """Whether a folder looks like a transformers checkpoint (config.json and weights or a weight index)."""
    return (directory / "config.json").exists() and any(
        (directory / name).exists() or (directory / f"{name}.index.json").exists() for name in WEIGHTS
    )


def read_config(directory: Path) -> dict:
    """config.json of a Whisper checkpoint that openai-whisper can run, refused (one line naming the key) when it
    is not one: every dimension a whole number, the vocabulary one of openai-whisper's tokenizers, 80 or 128 mel
    bins, 1500 encoder positions (30 s), an even d_model that the attention heads divide."""
    config = read_json(directory / "config.json", f"{directory}: unreadable config.json ({{error}}); re-save the model")
    if not isinstance(config, dict):
        raise WpatchError(
            f"{directory}: config.json holds {shown(config, 30)}, not an object of settings; re-save the model"
        )
    kind = config.get("model_type")
    if kind != "whisper":
        raise WpatchError(
            f"{directory}: config.json says model_type {shown(kind)}, not 'whisper'; point --model.model at a Whisper "
            "checkpoint"
        )
    activation, scaled = config.get("activation_function", "gelu"), config.get("scale_embedding", False)
    if activation != "gelu" or scaled:
        raise WpatchError(
            f"{directory}: a Whisper variant openai-whisper cannot represent (activation {shown(activation)}, "
            f"scale_embedding {shown(scaled)}); use a standard Whisper checkpoint"
        )
    missing = [key for key in DIMENSIONS.values() if key not in config]
    if missing:
        raise WpatchError(f"{directory}: config.json lacks {missing[0]}, which a Whisper config has; re-save the model")
    for key in (*DIMENSIONS.values(), "encoder_ffn_dim", "decoder_ffn_dim"):
        value = config.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= LARGEST:
            raise WpatchError(
                f"{directory}: config.json key {key} is {shown(value)}, not a whole number from 1 to {LARGEST}; "
                "re-save the model"
            )
    if config["vocab_size"] not in VOCABULARIES:
        raise WpatchError(
            f"{directory}: vocabulary of {config['vocab_size']} tokens, none of openai-whisper's tokenizers "
            f"({', '.join(map(str, VOCABULARIES))}); a fine-tune with added tokens is not supported"
        )
    for key, allowed, why in (
        ("num_mel_bins", (80, 128), "openai-whisper's log-mel has 80 or 128 bins"),
        ("max_source_positions", (N_FRAMES // 2,), "Whisper's 30 s input fills 1500 encoder positions"),
    ):
        if config[key] not in allowed:
            raise WpatchError(f"{directory}: config.json key {key} is {config[key]}, but {why}; re-save the model")
    width = config["d_model"]
    if width % 2:
        raise WpatchError(
            f"{directory}: config.json key d_model is {width}, but the encoder's sinusoidal positions need an even "
            "width; re-save the model"
        )
    for key in ("encoder_attention_heads", "decoder_attention_heads"):
        if width % config[key]:
            raise WpatchError(
                f"{directory}: config.json key {key} is {config[key]}, which does not divide d_model {width} into "
                "equal heads; fix the config or re-save the model"
            )
    if {config.get("encoder_ffn_dim", 4 * width), config.get("decoder_ffn_dim", 4 * width)} != {4 * width}:
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


def expected_axes(key: str) -> tuple[str | int, ...]:
    """The shape of openai-whisper parameter `key` (or transformers' `proj_out.weight`), each axis named by the
    config.json key that sets its size (a number where none does)."""
    part, name = key.split(".")[0], key.split(".")[-2]
    if name in ("conv1", "conv2"):
        return ("d_model", "num_mel_bins" if name == "conv1" else "d_model", 3)[: 3 if key.endswith("weight") else 1]
    if key.endswith("positional_embedding"):
        return ("max_source_positions" if part == "encoder" else "max_target_positions", "d_model")
    if name == "token_embedding" or key == "proj_out.weight":
        return ("vocab_size", "d_model")
    if name in ("0", "2"):  # the MLP's two layers
        ffn = f"{part}_ffn_dim"
        if key.endswith("bias"):
            return (ffn if name == "0" else "d_model",)
        return (ffn, "d_model") if name == "0" else ("d_model", ffn)
    if name in ("query", "key", "value", "out") and key.endswith("weight"):
        return ("d_model", "d_model")
    return ("d_model",)  # biases and layer norms


def size(config: dict, axis: str | int) -> int:
    """The size of one axis of `expected_axes` under a checked config (a feed-forward width 4 x d_model unless set)."""
    return config.get(axis, 4 * config["d_model"]) if isinstance(axis, str) else axis


def _disagreement(directory: Path, config: dict, name: str, stored: Stored, axes: tuple) -> WpatchError:
    """A tensor whose shape config.json does not give, named with the config keys behind the sizes that differ."""
    differing = [a for a, seen in zip(axes, stored.shape) if size(config, a) != seen]
    if len(stored.shape) != len(axes):
        differing = list(axes)
    keys = [f"{a} ({size(config, a)})" for a in dict.fromkeys(differing) if isinstance(a, str)]
    given = f"config.json's {', '.join(keys)}" if keys else "a Whisper checkpoint"
    return WpatchError(
        f"{directory}: tensor {name} in {stored.file} has shape {list(stored.shape)}, but {given} makes it "
        f"{[size(config, a) for a in axes]}; the weights and config.json disagree: re-save the model"
    )


def check_checkpoint(directory: Path) -> ModelDimensions:
    """The dimensions of a checkpoint folder, once config.json, the index and every weight file's header are
    checked against one another, reading no tensor data: every tensor openai-whisper needs is there with the
    shape config.json gives, and none other (but a tied output projection)."""
    config = read_config(directory)
    dims = dimensions(config)
    stored: dict[str, Stored] = {}
    for path in weight_files(directory):
        for name, tensor in stored_tensors(path).items():
            if name in stored:
                raise WpatchError(
                    f"{directory}: tensor {shown(name)} is in both {stored[name].file} and {path.name}; re-save the "
                    "model"
                )
            stored[name] = tensor
    prefix = "model." if any(k.startswith("model.") for k in stored) else ""
    for part, key in (("encoder", "encoder_layers"), ("decoder", "decoder_layers")):
        found = {int(m[1]) for k in stored if (m := re.match(rf"{prefix}{part}\.layers\.(\d{{1,6}})\.", k))}
        if len(found) != config[key] or found != set(range(config[key])):
            raise WpatchError(
                f"{directory}: config.json key {key} is {config[key]}, but the weights hold {len(found)} {part} "
                "layers; the weights and config.json disagree: re-save the model"
            )
    names = {key: prefix + hf for key, hf in name_map(dims.n_audio_layer, dims.n_text_layer).items()}
    missing = [hf for hf in names.values() if hf not in stored]
    if missing:
        raise WpatchError(
            f"{directory}: checkpoint lacks {missing[0]} ({len(missing)} tensors missing); re-save the model"
        )
    unused = sorted(k for k in stored if k not in {*names.values(), "proj_out.weight"})
    if unused:
        raise WpatchError(
            f"{directory}: checkpoint has tensors with no openai-whisper counterpart: {shown(unused[:3])}; not "
            "supported"
        )
    for key, name in [*names.items(), ("proj_out.weight", "proj_out.weight")]:
        axes = expected_axes(key)
        if name in stored and stored[name].shape != tuple(size(config, a) for a in axes):
            raise _disagreement(directory, config, name, stored[name], axes)
    alignment_heads(directory, dims)
    return dims


def alignment_heads(directory: Path, dims: ModelDimensions) -> list | None:
    """The (decoder layer, head) pairs generation_config.json names as alignment heads, if the folder has one."""
    path = directory / "generation_config.json"
    if not path.exists():
        return None
    generation = read_json(
        path, f"{directory}: unreadable generation_config.json ({{error}}); re-save the model or delete it"
    )
    heads = generation.get("alignment_heads") if isinstance(generation, dict) else generation
    if heads is None:
        return None
    limits = (dims.n_text_layer, dims.n_text_head)
    if not isinstance(heads, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(type(i) is int and 0 <= i < n for i, n in zip(pair, limits))
        for pair in heads
    ):
        raise WpatchError(
            f"{directory}: generation_config.json key alignment_heads is {shown(heads)}, not [decoder layer, head] "
            f"pairs of this model ({limits[0]} layers of {limits[1]} heads); fix the file or delete it"
        )
    return heads


def convert(dims: ModelDimensions, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """openai-whisper's state dict from a checked checkpoint's tensors (any dtype kept)."""
    prefix = "model." if any(k.startswith("model.") for k in weights) else ""
    return {key: weights[prefix + hf] for key, hf in name_map(dims.n_audio_layer, dims.n_text_layer).items()}


def load_huggingface(directory: str | Path) -> Whisper:
    """An openai-whisper model (fp32) holding exactly the weights of a transformers Whisper checkpoint folder,
    checked whole (`check_checkpoint`) before its data is read (`wpatch.models.converted`)."""
    directory = Path(directory)
    dims = check_checkpoint(directory)
    weights = {k: v for path in weight_files(directory) for k, v in read_tensors(path).items()}
    projection = ("proj_out", weights.get("proj_out.weight"))
    return converted_whisper(directory, dims, convert(dims, weights), projection, alignment_heads(directory, dims))


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
            for shard in sorted(set(read_index(snapshot / f"{name}.index.json").values())):
                _fetch(repo, shard, snapshot / shard)
            break
        if _fetch(repo, name, snapshot / name):
            break
    if wav2vec2.model_type(snapshot):
        for name in PROCESSOR_FILES:  # a CTC model's labels and input scaling (Whisper's tokenizer is openai-whisper's)
            _fetch(repo, name, snapshot / name)
    (snapshot.parent.parent / "refs").mkdir(exist_ok=True)
    (snapshot.parent.parent / "refs" / "main").write_text("main")
    if not is_checkpoint(snapshot):
        raise WpatchError(f"model {repo!r}: the hub has no {' or '.join(WEIGHTS)} for it; not a Whisper checkpoint")
    return snapshot


def hub_directory(repo: str) -> Path:
    """The local folder of hub model `repo`: the cached snapshot, else a download."""
    return cached_snapshot(repo) or download(repo)
