"""The weight files of a Hugging Face checkpoint folder, read and checked; each problem is one line naming the file.

`weight_files` lists them (model.safetensors or pytorch_model.bin, or the shards its index names); `stored_tensors`
gives each tensor's dtype and shape without reading its data (a safetensors file's header, its offsets checked
against the file's size, so a file cut short is found; a .bin memory-mapped); `read_tensors` reads the data.
"""

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from wpatch.errors import WpatchError

WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # preferred first, as transformers reads them
FLOATS = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
MAX_HEADER = 100_000_000  # bytes: the safetensors library's own limit


@dataclass(frozen=True)
class Stored:
    """One tensor as a weight file stores it."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    file: str


def shown(value, width: int = 60) -> str:
    """A value from a file, on one short line (its repr, cut)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def read_json(path: Path, refusal: str):
    """The value a JSON file holds; a file that cannot be read or parsed is refused in one line: `refusal`, with the
    kind of error in place of `{error}`."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as error:
        raise WpatchError(refusal.replace("{error}", type(error).__name__)) from None


def read_index(path: Path) -> dict[str, str]:
    """The `weight_map` (tensor name -> shard file) of a shard index, refused unless every shard is a plain file
    name in the index's folder."""
    index = read_json(path, f"{path} is not readable JSON ({{error}}); download or copy the checkpoint again")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise WpatchError(
            f"{path} has no weight_map (tensor name -> shard file); download or copy the checkpoint again"
        )
    for shard in weight_map.values():
        if shard in ("", ".", "..") or Path(shard).name != shard or "\x00" in shard:
            raise WpatchError(
                f"{path}: weight_map names shard {shown(shard)}, not a file name in its folder; download or copy "
                "the checkpoint again"
            )
    return weight_map


def weight_files(directory: Path) -> list[Path]:
    """The files holding a checkpoint's tensors: the shards its index lists (every one must be there), else its
    single weights file."""
    for name in WEIGHTS:
        index = directory / f"{name}.index.json"
        if index.exists():
            shards = sorted(set(read_index(index).values()))
            missing = [s for s in shards if not (directory / s).is_file()]
            if missing:
                raise WpatchError(
                    f"{directory}: shard {missing[0]} listed in {index.name} is missing ({len(missing)} of "
                    f"{len(shards)} missing); copy or download the whole checkpoint"
                )
            return [directory / s for s in shards]
        if (directory / name).exists():
            return [directory / name]
    raise WpatchError(f"{directory}: config.json but no {' or '.join(WEIGHTS)} (or index); re-save the model")


def _damaged(path: Path, what: str) -> WpatchError:
    return WpatchError(f"{path} {what}; download or copy the file again")


def _header_entry(path: Path, name: str, entry) -> tuple[str, list, list]:
    """dtype, shape and data offsets of one header entry, each checked for its form."""
    if not isinstance(entry, dict):
        raise _damaged(path, f"has a damaged header: tensor {shown(name)} is described by {shown(entry)}")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")

    def counts(values, length=None):
        return (
            isinstance(values, list)
            and (length is None or len(values) == length)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)
        )

    if not isinstance(dtype, str) or not counts(shape) or not counts(offsets, 2) or offsets[0] > offsets[1]:
        raise _damaged(path, f"has a damaged header: tensor {shown(name)} has no valid dtype, shape and data_offsets")
    return dtype, shape, offsets


def safetensors_header(path: Path) -> dict[str, Stored]:
    """Every tensor of a safetensors file from its header alone, checked as the safetensors library checks it:
    a floating-point dtype, data offsets that match the dtype and shape and fill the rest of the file exactly."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        start = file.read(8)
        length = struct.unpack("<Q", start)[0] if len(start) == 8 else None
        if length is None or length > min(size - 8, MAX_HEADER):
            raise _damaged(path, f"is cut short or not a safetensors file ({size} bytes, too few for its header)")
        try:
            header = json.loads(file.read(length).decode())
        except (ValueError, RecursionError):
            header = None
    if not isinstance(header, dict):
        raise _damaged(path, "is not a safetensors file (its header is not a JSON object)")
    tensors, spans = {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, offsets = _header_entry(path, name, entry)
        if dtype not in FLOATS:
            raise WpatchError(
                f"{path}: tensor {shown(name)} is stored as {shown(dtype)}; a Whisper checkpoint stores floating-point "
                f"weights ({', '.join(FLOATS)}): re-save the model"
            )
        if offsets[1] - offsets[0] != math.prod(shape) * FLOATS[dtype].itemsize:
            raise _damaged(path, f"has a damaged header: tensor {shown(name)}'s data_offsets do not fit its shape")
        tensors[name] = Stored(FLOATS[dtype], tuple(shape), path.name)
        spans.append(offsets)
    data, end = size - 8 - length, 0
    for begin, stop in sorted(spans):
        if begin != end:
            raise _damaged(path, f"has a damaged header: its tensors' data has a gap or overlap at byte {begin}")
        end = stop
    if end > data:
        raise _damaged(path, f"is cut short: its header places tensor data up to byte {end}, the file holds {data}")
    if end < data:
        raise _damaged(path, f"has {data - end} bytes after the tensor data its header describes")
    return tensors


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one weight file, by name, in their stored dtype (a .bin memory-mapped)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as error:
            raise _damaged(path, f"is not a readable safetensors file ({str(error).splitlines()[0]})") from None
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # a damaged pickle or zip raises any of a dozen types
        raise _damaged(path, f"is not a readable PyTorch weights file ({type(error).__name__})") from None
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise _damaged(path, "holds no table of named tensors")
    return tensors


def stored_tensors(path: Path) -> dict[str, Stored]:
    """dtype and shape of every tensor in one weight file, read without its data (a .bin: memory-mapped)."""
    if path.suffix == ".safetensors":
        return safetensors_header(path)
    tensors = {}
    for name, tensor in read_tensors(path).items():
        if not tensor.is_floating_point():
            raise WpatchError(
                f"{path}: tensor {shown(name)} is stored as {tensor.dtype}; a Whisper checkpoint stores floating-point "
                "weights: re-save the model"
            )
        tensors[name] = Stored(tensor.dtype, tuple(tensor.shape), path.name)
    return tensors
