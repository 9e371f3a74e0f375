"""Hugging Face transformers Whisper checkpoints: written by transformers' own `save_pretrained`, read back by
wpatch bit for bit, and checked against transformers' `WhisperForConditionalGeneration` as a second, independent
implementation of the model and of patching."""

import functools
import http.server
import json
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
import whisper
from whisper.decoding import DecodingTask
from whisper.model import ModelDimensions, Whisper

from tests.conftest import SMALL_DIMS, random_whisper
from tests.predict_run import main, predict_args
from wpatch.errors import WpatchError
from wpatch.models.huggingface import name_map
from wpatch.models.loading import load_model, model_dims
from wpatch.patching.decoding import cross_attention_cache, greedy_transcripts
from wpatch.stimuli.audio import load_audio, log_mel

transformers = pytest.importorskip("transformers")

# Encoder outputs of transformers and openai-whisper on the same log-mels, fp32: the same operations (both call
# torch's scaled_dot_product_attention with scale d_head^-1/2, the same GELU and layer norms), so on one CPU they
# agree bit for bit (measured: max |diff| 0.0 over the four clips, |x| up to 12.5). Another kernel order
# may round differently: one fp32 ulp at 12.5 is 9.5e-7, and 1e-4 allows about 100 ulps, far below the effect of
# any mapping error (a swapped layer norm moves outputs by O(1)).
ENCODER_TOLERANCE = 1e-4


def export(model: Whisper, folder: Path, dtype: torch.dtype | None = None, **save) -> Path:
    """`model` written as a user of transformers writes it: a `WhisperForConditionalGeneration` built from a
    `WhisperConfig`, given the weights, then `save_pretrained`."""
    d = model.dims
    config = transformers.WhisperConfig(
        vocab_size=d.n_vocab,
        num_mel_bins=d.n_mels,
        d_model=d.n_audio_state,
        encoder_layers=d.n_audio_layer,
        encoder_attention_heads=d.n_audio_head,
        decoder_layers=d.n_text_layer,
        decoder_attention_heads=d.n_text_head,
        encoder_ffn_dim=4 * d.n_audio_state,
        decoder_ffn_dim=4 * d.n_text_state,
        max_source_positions=d.n_audio_ctx,
        max_target_positions=d.n_text_ctx,
    )
    hf = transformers.WhisperForConditionalGeneration(config).eval()
    weights = model.state_dict()
    state = {f"model.{hf_name}": weights[key] for key, hf_name in name_map(d.n_audio_layer, d.n_text_layer).items()}
    result = hf.load_state_dict(state, strict=False)
    assert set(result.missing_keys) <= {"proj_out.weight"} and not result.unexpected_keys
    assert hf.proj_out.weight.data_ptr() == hf.model.decoder.embed_tokens.weight.data_ptr()  # tied
    if dtype is not None:
        hf = hf.to(dtype)
    hf.save_pretrained(folder, **save)
    return folder


def assert_same_weights(loaded: Whisper, expected: dict[str, torch.Tensor]) -> None:
    state = loaded.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert state[key].dtype == torch.float32 and torch.equal(state[key], value.float()), key


@pytest.fixture(scope="module")
def tiny_en():
    return load_model("tiny.en")


@pytest.fixture(scope="module")
def tiny_en_export(tiny_en, tmp_path_factory) -> Path:
    return export(tiny_en, tmp_path_factory.mktemp("hf") / "tiny.en")


@pytest.mark.real_weights
@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_real_weights_round_trip_bit_identical(name, tiny_en, tmp_path):
    model = tiny_en if name == "tiny.en" else load_model(name)
    folder = export(model, tmp_path / name)
    assert (folder / "model.safetensors").exists()
    assert model_dims(str(folder)) == model.dims
    assert_same_weights(load_model(str(folder)), model.state_dict())


def shared(clip_dir: str) -> list[str]:
    """Options that make a run use the session's clip cache (the last --data.cache_dir given wins)."""
    return ["--data.cache_dir", clip_dir]


def small(dims: ModelDimensions = SMALL_DIMS, **changes) -> Whisper:
    return random_whisper(ModelDimensions(**{**dims.__dict__, **changes}))


def as_bin(folder: Path, shards: int = 1) -> None:
    """The export rewritten as older transformers wrote it (`safe_serialization=False`, which transformers 5 no
    longer honours): pytorch_model.bin, or `shards` pytorch_model-*.bin with their index; the tied proj_out kept."""
    from safetensors.torch import load_file

    weights = {k: v for f in sorted(folder.glob("model*.safetensors")) for k, v in load_file(f).items()}
    weights["proj_out.weight"] = weights["model.decoder.embed_tokens.weight"]
    for f in folder.glob("model*.safetensors*"):
        f.unlink()
    if shards == 1:
        torch.save(weights, folder / "pytorch_model.bin")
        return
    names, weight_map = sorted(weights), {}
    for i in range(shards):
        shard = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = names[i::shards]
        torch.save({k: weights[k] for k in part}, folder / shard)
        weight_map.update(dict.fromkeys(part, shard))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize(
    "dtype, save, bin_shards",
    [
        (None, {"max_shard_size": "200KB"}, 0),  # sharded safetensors
        (None, {}, 1),  # pytorch_model.bin
        (torch.float16, {}, 0),
        (torch.bfloat16, {}, 3),  # sharded .bin
    ],
)
def test_formats_shards_and_stored_dtypes(dtype, save, bin_shards, tmp_path):
    model = small(n_vocab=51865)
    folder = export(model, tmp_path / "m", dtype, **save)
    if bin_shards:
        as_bin(folder, bin_shards)
    expected = {k: v.to(dtype) if dtype else v for k, v in model.state_dict().items()}
    assert_same_weights(load_model(str(folder)), expected)


def one_line_error(spec: str) -> str:
    with pytest.raises(WpatchError) as error:
        load_model(spec)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_refusals_in_one_line(tmp_path):
    folder = export(small(), tmp_path / "m", max_shard_size="200KB")
    (folder / "config.json").write_text((folder / "config.json").read_text().replace('"whisper"', '"bert"'))
    assert "model_type 'bert', not 'whisper' (nor wav2vec2, hubert, wavlm)" in one_line_error(str(folder))
    folder = export(small(n_vocab=51870), tmp_path / "added_tokens")
    assert "vocabulary of 51870 tokens" in one_line_error(str(folder))
    folder = export(small(), tmp_path / "sharded", max_shard_size="200KB")
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    assert f"shard {shard.name} listed in model.safetensors.index.json is missing" in one_line_error(str(folder))
    folder = export(small(), tmp_path / "untied")
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    weights["proj_out.weight"] = weights["model.decoder.embed_tokens.weight"] + 1
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    assert "output projection (proj_out) different" in one_line_error(str(folder))


def hub_layout(cache: Path, repo: str, folder: Path) -> None:
    """`folder` placed in a Hugging Face hub cache as huggingface_hub lays it out (refs/main -> snapshot)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("0123abcd")
    (root / "snapshots").mkdir()
    folder.rename(root / "snapshots" / "0123abcd")


def test_hub_id_from_the_cache_offline_and_downloaded(tmp_path, monkeypatch):
    model = small(n_mels=128, n_vocab=51866)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: offline
    message = one_line_error("someone/whisper-small-test")
    assert "not in the Hugging Face cache" in message and "unreachable" in message
    hub_layout(tmp_path / "hub", "someone/whisper-small-test", export(model, tmp_path / "m"))
    assert_same_weights(load_model("someone/whisper-small-test"), model.state_dict())
    assert model_dims("someone/whisper-small-test").n_mels == 128

    served = tmp_path / "served" / "other" / "whisper-sharded" / "resolve" / "main"
    export(model, served, max_shard_size="200KB")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        assert_same_weights(load_model("other/whisper-sharded"), model.state_dict())
    finally:
        server.shutdown()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert_same_weights(load_model("other/whisper-sharded"), model.state_dict())  # now from the cache


@pytest.mark.parametrize("decoder_layers", [2, 4])
def test_large_v3_shapes_run_end_to_end(decoder_layers, tmp_path, clip_dir):
    """128 mel bins, a 51866 vocabulary (large-v3's tokenizer, 100 languages) and a shallow decoder, as in
    distil-large-v3 (2) and large-v3-turbo (4): encoder and decoder sites."""
    folder = export(small(n_mels=128, n_vocab=51866, n_text_layer=decoder_layers), tmp_path / "m")
    out = tmp_path / "out"
    main(
        predict_args(
            tmp_path, str(folder), out, "--model.sites", "[block_out, dec_resid]", *shared(clip_dir), max_tokens=3
        )
    )
    rows = pd.read_csv(out / "predictions.csv")
    assert set(rows["site"]) == {"block_out", "dec_resid"}
    assert rows.loc[rows["site"] == "dec_resid", "target_layer"].nunique() == decoder_layers
    assert rows.loc[rows["site"] == "block_out", "target_layer"].nunique() == SMALL_DIMS.n_audio_layer


# --- against transformers' own model, on the real tiny.en weights ---------------------------------------------


LAYERS = [1, 3]  # source and target layers of the real-weight runs: two diagonal and two off-diagonal patches
WORDS = ["bat", "pat", "ship", "chip"]


@pytest.fixture(scope="module")
def tiny_en_runs(tiny_en_export, tmp_path_factory, clip_dir):
    """The same small Experiment A run (2 pairs, both directions, layers 1 and 3) on tiny.en and on its export."""
    outs = {}
    for name, spec in (("openai", "tiny.en"), ("export", str(tiny_en_export))):
        folder = tmp_path_factory.mktemp(name)
        layers = ["--model.source_layers", str(LAYERS), "--model.target_layers", str(LAYERS)]
        pairs = "word_a,word_b\nbat,pat\nship,chip\n"
        main(predict_args(folder, spec, None, *layers, *shared(clip_dir), pairs=pairs, max_tokens=4))
        outs[name] = folder / "out"
    return outs


@pytest.mark.real_weights
def test_export_predicts_exactly_like_tiny_en(tiny_en_runs):
    files = [(tiny_en_runs[n] / "predictions.csv").read_bytes() for n in ("openai", "export")]
    assert files[0] == files[1]


def hf_greedy(hf, encoded: torch.Tensor, wpatch_model: Whisper, max_tokens: int) -> list[str]:
    """Greedy transcripts of transformers' decoder on encoder outputs, under openai-whisper's decoding rules
    (its initial tokens and logit filters); no kv cache: every step reruns the whole prefix."""
    task = DecodingTask(
        wpatch_model, whisper.DecodingOptions(language="en", sample_len=max_tokens, without_timestamps=True, fp16=False)
    )
    tokens = torch.tensor([task.initial_tokens]).repeat(len(encoded), 1)
    eot = task.tokenizer.eot
    for _ in range(max_tokens):
        states = hf.model.decoder(input_ids=tokens, encoder_hidden_states=encoded).last_hidden_state
        logits = hf.proj_out(states[:, -1]).float()
        for logit_filter in task.logit_filters:
            logit_filter.apply(logits, tokens)
        following = logits.argmax(-1)
        following[tokens[:, -1] == eot] = eot
        tokens = torch.cat([tokens, following[:, None]], dim=-1)
        if (following == eot).all():
            break
    texts = []
    for sequence in tokens[:, task.sample_begin :].tolist():
        sequence = sequence[: sequence.index(eot)] if eot in sequence else sequence
        texts.append(task.tokenizer.decode([t for t in sequence if t < eot]).strip())
    return texts


def hidden(output):
    """An encoder layer's hidden states: its output (transformers 5) or the output's first element (4.x)."""
    return output[0] if isinstance(output, tuple) else output


def replaced(output, states: torch.Tensor):
    """A layer's output with its hidden states replaced, in the output's own form."""
    return (states, *output[1:]) if isinstance(output, tuple) else states


@pytest.mark.real_weights
@torch.no_grad()
def test_transformers_agrees_clean_and_patched(tiny_en, tiny_en_export, tiny_en_runs, clip_dir):
    """transformers' model on the same log-mels: the encoder output within ENCODER_TOLERANCE, the clean greedy
    transcripts, and, with a forward hook on its encoder layer t returning the donor's layer-s output, the patched
    transcripts of wpatch's block_out rows (every (s, t) of the run, both directions of both pairs)."""
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(tiny_en_export).eval()
    clips = [next(Path(clip_dir).glob(f"hibari/heart/{w}-*.wav")) for w in WORDS]
    mels = torch.stack([log_mel(load_audio(clip), 80) for clip in clips])
    layers, seen = hf.model.encoder.layers, {}

    def keep(layer):
        def hook(_module, _inputs, output):
            seen[layer] = hidden(output)  # returns None: the output is left as it is

        return layers[layer].register_forward_hook(hook)

    handles = [keep(s) for s in LAYERS]
    theirs = hf.model.encoder(mels).last_hidden_state  # clean, keeping each donor layer's output
    for handle in handles:
        handle.remove()
    ours = tiny_en.encoder(mels)
    assert (ours - theirs).abs().max() < ENCODER_TOLERANCE
    clean = greedy_transcripts(tiny_en, cross_attention_cache(tiny_en, ours), "en", max_tokens=4)
    assert hf_greedy(hf, theirs, tiny_en, 4) == clean

    partner = {"bat": "pat", "pat": "bat", "ship": "chip", "chip": "ship"}
    donors = [WORDS.index(partner[w]) for w in WORDS]  # recipient i gets the layer-s output of its pair's other word
    patches = [(s, t) for s in LAYERS for t in LAYERS]
    encoded = []
    for s, t in patches:
        handle = layers[t].register_forward_hook(lambda _m, _i, out, s=s: replaced(out, seen[s][donors]))
        encoded.append(hf.model.encoder(mels).last_hidden_state)
        handle.remove()
    patched = hf_greedy(hf, torch.cat(encoded), tiny_en, 4)
    rows = pd.read_csv(tiny_en_runs["openai"] / "predictions.csv", keep_default_na=False)
    for (s, t), transcripts in zip(patches, [patched[i : i + len(WORDS)] for i in range(0, len(patched), len(WORDS))]):
        for target, transcript in zip(WORDS, transcripts):
            row = rows[(rows.target_word == target) & (rows.source_layer == s) & (rows.target_layer == t)]
            assert row.source_word.tolist() == [partner[target]]
            assert row.transcript.tolist() == [transcript], (s, t, target)
