"""A Hugging Face checkpoint folder is checked whole before any tensor data is read, and anything wrong with it is
one line naming the file and the key: each damage a user has met, then any input at all (hypothesis) to the
readers of config.json, the shard index and a safetensors file."""

import dataclasses
import json
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from whisper.model import ModelDimensions

from tests.conftest import SMALL_DIMS, random_whisper
from wpatch.errors import WpatchError
from wpatch.models.huggingface import DIMENSIONS, check_checkpoint, expected_axes, name_map, read_config, size
from wpatch.models.loading import load_model
from wpatch.models.weight_files import read_index, read_tensors, safetensors_header

TINY = dataclasses.replace(SMALL_DIMS, n_audio_state=8, n_text_state=8, n_audio_layer=1, n_text_layer=1)
BOUNDED = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def config_of(dims: ModelDimensions) -> dict:
    return {"model_type": "whisper", **{key: getattr(dims, dim) for dim, key in DIMENSIONS.items()}}


def write_checkpoint(folder: Path, dims: ModelDimensions = TINY, shards: int = 1, **tensors) -> Path:
    """A checkpoint folder as transformers saves one (names under `model.`), in `shards` safetensors files (more
    than one: with their index); `tensors` replace or add tensors by their transformers name."""
    folder.mkdir(parents=True)
    weights = random_whisper(dims).state_dict()
    state = {f"model.{hf}": weights[key] for key, hf in name_map(dims.n_audio_layer, dims.n_text_layer).items()}
    state.update(tensors)
    (folder / "config.json").write_text(json.dumps(config_of(dims)))
    if shards == 1:
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        return folder
    names, weight_map = sorted(state), {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in names[i::shards]}, folder / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names[i::shards], shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def one_line(call, *args) -> str:
    with pytest.raises(WpatchError) as error:
        call(*args)
    message = str(error.value)
    assert message and "\n" not in message, message
    return message


def test_a_folder_written_here_loads_exactly(tmp_path):
    folder = write_checkpoint(tmp_path / "m", SMALL_DIMS, shards=2)
    assert check_checkpoint(folder) == SMALL_DIMS
    loaded = load_model(str(folder)).state_dict()
    for key, value in random_whisper(SMALL_DIMS).state_dict().items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize(
    "dims", [SMALL_DIMS, ModelDimensions(128, 1500, 96, 3, 2, 51866, 448, 96, 4, 3)], ids=["small", "large-v3-like"]
)
def test_expected_axes_give_whispers_own_shapes(dims):
    config = config_of(dims)
    for key, value in random_whisper(dims).state_dict().items():
        assert tuple(size(config, axis) for axis in expected_axes(key)) == value.shape, key


def edit_config(**changes):
    def damage(folder: Path):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **changes}))

    return damage


def cut_in_half(folder: Path):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def write(name: str, text: str):
    return lambda folder: (folder / name).write_text(text)


DAMAGES = {  # what was done to a good folder -> what the one line says
    "a truncated model.safetensors": (cut_in_half, "model.safetensors is cut short: its header places tensor data"),
    "d_model that the weights do not have": (
        edit_config(d_model=16, encoder_ffn_dim=64, decoder_ffn_dim=64),
        "tensor model.encoder.conv1.weight in model.safetensors has shape [8, 80, 3], but config.json's d_model (16) "
        "makes it [16, 80, 3]",
    ),
    "a value of the wrong type": (edit_config(num_mel_bins="80"), "config.json key num_mel_bins is '80', not a whole"),
    "a config.json that is a list": (write("config.json", "[1, 2]"), "config.json holds [1, 2], not an object"),
    "attention heads that do not divide d_model": (
        edit_config(encoder_attention_heads=5),
        "config.json key encoder_attention_heads is 5, which does not divide d_model 8",
    ),
    "80 mel bins stored, 128 in config.json": (
        edit_config(num_mel_bins=128),
        "has shape [8, 80, 3], but config.json's num_mel_bins (128) makes it [8, 128, 3]",
    ),
    "a layer more in config.json than in the weights": (
        edit_config(decoder_layers=2),
        "config.json key decoder_layers is 2, but the weights hold 1 decoder layers",
    ),
    "a generation_config.json naming a head the model lacks": (
        write("generation_config.json", '{"alignment_heads": [[0, 7]]}'),
        "generation_config.json key alignment_heads is [[0, 7]], not [decoder layer, head] pairs of this model",
    ),
}


@pytest.mark.parametrize("damage, expect", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_folder_is_one_line_before_any_data_is_read(damage, expect, tmp_path, monkeypatch):
    folder = write_checkpoint(tmp_path / "m")
    damage(folder)
    assert expect in one_line(check_checkpoint, folder)
    monkeypatch.setattr("wpatch.models.huggingface.read_tensors", None)  # checking reads no tensor data
    assert expect in one_line(load_model, str(folder))


def test_weights_of_other_shapes_or_types_are_named(tmp_path):
    positions = torch.zeros(1000, 8)  # config.json says 1500 positions
    folder = write_checkpoint(tmp_path / "ctx", **{"model.encoder.embed_positions.weight": positions})
    assert "config.json's max_source_positions (1500) makes it [1500, 8]" in one_line(check_checkpoint, folder)
    codes = torch.zeros(8, dtype=torch.int8)
    folder = write_checkpoint(tmp_path / "int8", **{"model.encoder.layer_norm.bias": codes})
    assert "tensor 'model.encoder.layer_norm.bias' is stored as 'I8'" in one_line(check_checkpoint, folder)


@pytest.mark.parametrize(
    "index, expect",
    [
        ("{not json", "model.safetensors.index.json is not readable JSON (JSONDecodeError)"),
        ('{"metadata": {}}', "model.safetensors.index.json has no weight_map"),
        ('{"weight_map": {"a": "../../model.safetensors"}}', "names shard '../../model.safetensors', not a file name"),
    ],
)
def test_a_bad_index_is_one_line(index, expect, tmp_path):
    folder = write_checkpoint(tmp_path / "m", shards=2)
    (folder / "model.safetensors.index.json").write_text(index)
    assert expect in one_line(check_checkpoint, folder)


# --- any input: a parse or one WpatchError line, never another exception ----------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
DIMENSION = st.integers(-2, 70_000) | st.sampled_from([8, 16, 80, 128, 448, 1500, 51864, 51866]) | JSON
KEYS = [*dict.fromkeys(DIMENSIONS.values()), "model_type", "encoder_ffn_dim", "activation_function", "scale_embedding"]


def parsed_or_one_line(call, *args):
    try:
        return call(*args)
    except WpatchError as error:
        assert str(error) and "\n" not in str(error), str(error)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("hf") / "m")


@BOUNDED
@given(changes=st.dictionaries(st.sampled_from(KEYS), DIMENSION, max_size=3), dropped=st.sets(st.sampled_from(KEYS)))
def test_any_config_values_give_dims_or_one_line(good, changes, dropped):
    config = {k: v for k, v in {**config_of(TINY), **changes}.items() if k not in dropped}
    (good / "config.json").write_text(json.dumps(config))
    dims = parsed_or_one_line(check_checkpoint, good)
    assert dims in (None, TINY)


@BOUNDED
@given(content=st.binary(max_size=200) | JSON.map(json.dumps).map(str.encode))
def test_any_config_or_index_file_gives_a_parse_or_one_line(content):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.json"
        path.write_bytes(content)
        parsed_or_one_line(read_config, Path(folder))
        parsed_or_one_line(read_index, path)


@pytest.fixture(scope="module")
def safetensors_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("st") / "small.safetensors"
    save_file({"a": torch.ones(2, 3), "b": torch.zeros(4, dtype=torch.float16)}, path, metadata={"format": "pt"})
    return path.read_bytes()


@BOUNDED
@given(data=st.data())
def test_any_safetensors_file_gives_its_tensors_or_one_line(safetensors_bytes, data):
    good = bytearray(safetensors_bytes)
    length = struct.unpack("<Q", good[:8])[0]
    how = data.draw(st.sampled_from(["cut", "header", "bytes", "anything"]))
    if how == "cut":
        content = bytes(good[: data.draw(st.integers(0, len(good)))])
    elif how == "header":  # a header of any JSON, with the data as it was
        header = json.dumps(data.draw(JSON)).encode()
        content = struct.pack("<Q", len(header)) + header + bytes(good[8 + length :])
    elif how == "bytes":  # some bytes of the file overwritten
        for _ in range(data.draw(st.integers(1, 4))):
            good[data.draw(st.integers(0, len(good) - 1))] = data.draw(st.integers(0, 255))
        content = bytes(good)
    else:
        content = data.draw(st.binary(max_size=300))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        path.write_bytes(content)
        if parsed_or_one_line(safetensors_header, path) is not None:
            parsed_or_one_line(read_tensors, path)
