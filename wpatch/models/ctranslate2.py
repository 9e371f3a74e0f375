"""Read a CTranslate2 (faster-whisper) `model.bin` and convert it to openai-whisper weights, exactly.

The file layout (format version 6, spec `WhisperSpec`), little-endian: u32 version, name of the spec
(u16 length + bytes), u32 revision, u32 variable count, then per variable its name, rank, dims,
dtype code, byte count and raw data, then (alias, target) name pairs.
"""

import json
import mmap
import re
import struct
from pathlib import Path

import numpy as np
import torch
from whisper.model import ModelDimensions, Whisper

from wpatch.errors import WpatchError
from wpatch.models.converted import converted_whisper

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_BF16 = 5
PROJECTION = "decoder/projection/weight"  # the output projection: openai-whisper's is the token embedding


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise WpatchError(
                f"{self.path}: truncated CTranslate2 file at byte {self.pos}; re-install or re-download the model"
            )
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values if len(values) > 1 else values[0]

    def string(self) -> str:
        length = self.take("<H")
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.rstrip(b"\0").decode("utf-8")

    def raw(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise WpatchError(
                f"{self.path}: truncated CTranslate2 file at byte {self.pos}; re-install or re-download the model"
            )
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def skip(self, size: int) -> None:
        if self.pos + size > len(self.data):
            raise WpatchError(
                f"{self.path}: truncated CTranslate2 file at byte {self.pos}; re-install or re-download the model"
            )
        self.pos += size


def read_model_bin(path: str | Path, shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """All variables of a CTranslate2 `model.bin`, by name, in their stored dtype (aliases resolved).

    `shapes_only`: only the header is read (the file is memory-mapped); variables of more than 64 bytes are
    empty tensors on the meta device, with their shapes (enough for `dimensions`)."""
    path = Path(path)
    if shapes_only:
        with open(path, "rb") as file:
            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    else:
        data = path.read_bytes()
    reader = _Reader(data, path)
    version = reader.take("<I")
    if version != 6:
        raise WpatchError(
            f"{path}: CTranslate2 format version {version}, only version 6 is supported; convert the model with a "
            "recent ct2-transformers-converter"
        )
    spec = reader.string()
    if spec != "WhisperSpec":
        raise WpatchError(
            f"{path}: holds a {spec!r}, not a Whisper model; point the model spec at a faster-whisper model directory"
        )
    reader.take("<I")  # spec revision
    variables = {}
    for _ in range(reader.take("<I")):
        name = reader.string()
        rank = reader.take("<B")
        dims = [reader.take("<I") for _ in range(rank)]
        dtype = reader.take("<B")
        size = reader.take("<I")
        if shapes_only and size > 64:
            reader.skip(size)
            variables[name] = torch.empty(dims, device="meta")
            continue
        raw = reader.raw(size)
        if dtype == _BF16:
            array = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16)
        elif dtype in _DTYPES:
            array = torch.from_numpy(np.frombuffer(raw, dtype=_DTYPES[dtype]).copy())
        else:
            raise WpatchError(
                f"{path}: variable {name} has unknown dtype code {dtype}; the file is not a CTranslate2 model"
            )
        variables[name] = array.reshape(dims)
    for _ in range(reader.take("<I")):
        alias, target = reader.string(), reader.string()
        variables[alias] = variables[target]
    if reader.pos != len(reader.data):
        raise WpatchError(
            f"{path}: {len(reader.data) - reader.pos} bytes left after the last entry; the file is damaged, "
            "re-install it"
        )
    return variables


def _attention(prefix: str, src: str, kind: str) -> dict[str, str | tuple[str, int, int]]:
    """Map openai names of one attention module to CTranslate2 names (fused projections as (name, part, parts))."""
    names: dict[str, str | tuple[str, int, int]] = {}
    if kind == "self":
        for part, proj in enumerate(("query", "key", "value")):
            names[f"{prefix}.{proj}.weight"] = (f"{src}/linear_0/weight", part, 3)
            if proj != "key":
                names[f"{prefix}.{proj}.bias"] = (f"{src}/linear_0/bias", part, 3)
        out = "linear_1"
    else:
        names[f"{prefix}.query.weight"] = f"{src}/linear_0/weight"
        names[f"{prefix}.query.bias"] = f"{src}/linear_0/bias"
        names[f"{prefix}.key.weight"] = (f"{src}/linear_1/weight", 0, 2)
        names[f"{prefix}.value.weight"] = (f"{src}/linear_1/weight", 1, 2)
        names[f"{prefix}.value.bias"] = (f"{src}/linear_1/bias", 1, 2)
        out = "linear_2"
    names[f"{prefix}.out.weight"] = f"{src}/{out}/weight"
    names[f"{prefix}.out.bias"] = f"{src}/{out}/bias"
    return names


def _layer_norm(prefix: str, src: str) -> dict[str, str]:
    return {f"{prefix}.weight": f"{src}/gamma", f"{prefix}.bias": f"{src}/beta"}


def _block(prefix: str, src: str, cross: bool) -> dict:
    names = {**_attention(f"{prefix}.attn", f"{src}/self_attention", "self")}
    names.update(_layer_norm(f"{prefix}.attn_ln", f"{src}/self_attention/layer_norm"))
    if cross:
        names.update(_attention(f"{prefix}.cross_attn", f"{src}/attention", "cross"))
        names.update(_layer_norm(f"{prefix}.cross_attn_ln", f"{src}/attention/layer_norm"))
    for index, linear in ((0, "linear_0"), (2, "linear_1")):
        names[f"{prefix}.mlp.{index}.weight"] = f"{src}/ffn/{linear}/weight"
        names[f"{prefix}.mlp.{index}.bias"] = f"{src}/ffn/{linear}/bias"
    names.update(_layer_norm(f"{prefix}.mlp_ln", f"{src}/ffn/layer_norm"))
    return names


def name_map(n_audio_layer: int, n_text_layer: int) -> dict[str, str | tuple[str, int, int]]:
    """openai-whisper state-dict key -> CTranslate2 variable (or (fused variable, part, parts))."""
    names: dict = {}
    for conv in ("conv1", "conv2"):
        names[f"encoder.{conv}.weight"] = f"encoder/{conv}/weight"
        names[f"encoder.{conv}.bias"] = f"encoder/{conv}/bias"
    names["encoder.positional_embedding"] = "encoder/position_encodings/encodings"
    for i in range(n_audio_layer):
        names.update(_block(f"encoder.blocks.{i}", f"encoder/layer_{i}", cross=False))
    names.update(_layer_norm("encoder.ln_post", "encoder/layer_norm"))
    names["decoder.token_embedding.weight"] = "decoder/embeddings/weight"
    names["decoder.positional_embedding"] = "decoder/position_encodings/encodings"
    for i in range(n_text_layer):
        names.update(_block(f"decoder.blocks.{i}", f"decoder/layer_{i}", cross=True))
    names.update(_layer_norm("decoder.ln", "decoder/layer_norm"))
    return names


def dimensions(variables: dict[str, torch.Tensor]) -> ModelDimensions:
    """Model dimensions read off the tensor shapes and the stored head counts."""

    def count(side):
        return len({m.group(1) for k in variables if (m := re.match(rf"{side}/layer_(\d+)/", k))})

    n_audio_state, n_mels, _ = variables["encoder/conv1/weight"].shape
    n_vocab, n_text_state = variables["decoder/embeddings/weight"].shape
    return ModelDimensions(
        n_mels=n_mels,
        n_audio_ctx=variables["encoder/position_encodings/encodings"].shape[0],
        n_audio_state=n_audio_state,
        n_audio_head=int(variables["encoder/num_heads"]),
        n_audio_layer=count("encoder"),
        n_vocab=n_vocab,
        n_text_ctx=variables["decoder/position_encodings/encodings"].shape[0],
        n_text_state=n_text_state,
        n_text_head=int(variables["decoder/num_heads"]),
        n_text_layer=count("decoder"),
    )


def convert(variables: dict[str, torch.Tensor]) -> tuple[ModelDimensions, dict[str, torch.Tensor], set[str]]:
    """openai-whisper dims and state dict from CTranslate2 variables, plus the names of the variables used.

    Values keep their stored dtype (fp16 stays fp16). The key projections carry no bias in openai-whisper:
    their part of a fused bias must be zero, and is checked to be.
    """
    dims = dimensions(variables)
    state, used, fused_biases = {}, set(), set()
    for key, source in name_map(dims.n_audio_layer, dims.n_text_layer).items():
        if isinstance(source, tuple):
            name, part, parts = source
            state[key] = variables[name].chunk(parts, dim=0)[part]
            if name.endswith("/bias"):
                fused_biases.add((name, parts))
        else:
            name = source
            state[key] = variables[name]
        used.add(name)
    for name, parts in fused_biases:
        key_part = variables[name].chunk(parts, dim=0)[1 if parts == 3 else 0]
        if not key_part.eq(0).all():
            raise WpatchError(f"fused bias {name} has a non-zero key part, which openai-whisper cannot represent")
    return dims, state, used


def load_ctranslate2(directory: str | Path) -> Whisper:
    """An openai-whisper model (fp32) holding exactly the weights of a CTranslate2 Whisper directory
    (`wpatch.models.converted`)."""
    directory = Path(directory)
    variables = read_model_bin(directory / "model.bin")
    dims, state, used = convert(variables)
    unused = {k for k, v in variables.items() if v.dim() > 0 and k not in used and k != PROJECTION}
    if unused:
        raise WpatchError(
            f"{directory}: variables with no openai-whisper counterpart: {sorted(unused)[:3]}; this converter does "
            "not support that model"
        )
    config_file = directory / "config.json"
    heads = json.loads(config_file.read_text()).get("alignment_heads") if config_file.exists() else None
    return converted_whisper(directory, dims, state, (PROJECTION, variables.get(PROJECTION)), heads)
