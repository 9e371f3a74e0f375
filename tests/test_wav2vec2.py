"""The wav2vec2 family (`wpatch.models.wav2vec2`, patched by `wpatch.patching.ctc`) on random small models of each
architecture saved with save_pretrained: `wpatch predict`'s rows equal what transformers gives with plain forward
hooks, a clip patched with itself is its clean run, and the CTC measure is the sum over every alignment."""

import dataclasses
import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch
import transformers

from tests.conftest import SMALL_DIMS, random_whisper, save_checkpoint
from tests.ctc_models import SMALL, VOCAB, save_ctc_model, save_mms_model
from tests.predict_run import main, predict_args
from tests.same_rows import EPS32, FLOAT32_UNITS, batch_invariant_kernels
from wpatch.cli import main as wpatch
from wpatch.errors import WpatchError
from wpatch.models.loading import load_model
from wpatch.models.wav2vec2 import input_values, read_dims
from wpatch.patching.ctc import encode_plan, word_log_likelihood
from wpatch.patching.encoder import Patch, PatchedRun, layer_pairs
from wpatch.patching.plan import patch_specs
from wpatch.sites import check_whisper_sites
from wpatch.stimuli.audio import load_audio
from wpatch.text import ScoredWord

# (architecture, the large models' layout: pre-norm layers and an attention mask) for each family
MODELS = [("wav2vec2", False), ("hubert", True), ("wavlm", True), ("wavlm", False)]
SITES = "[block_out, resid_pre, attn_out, mlp_out, cnn_out]"
PAIRS = "word_a,word_b\nbat,pat\nhot,cold\n"


@pytest.fixture(scope="module", params=MODELS, ids=[f"{k}-{'large' if s else 'base'}" for k, s in MODELS])
def ctc_run(request, tmp_path_factory, clip_dir):
    """A random model's folder and the run folder of Experiment A's grid on it, every encoder site, windows all and
    word, alphas 1 and 0.5, both directions."""
    kind, stable = request.param
    folder = tmp_path_factory.mktemp(f"{kind}-{stable}")
    model = save_ctc_model(kind, folder / "model", stable=stable)
    options = ("--model.sites", SITES, "--model.windows", "[all, word]", "--model.alphas", "[1.0, 0.5]")
    options += ("--model.directions", "[denoising, noising]", "--data.cache_dir", clip_dir)
    main(predict_args(folder, str(model), None, pairs=PAIRS, options=options))
    return model, folder / "out"


def hooked_log_probs(hf, extractor, recipient, donor, n_samples, site, source, target, start, end, alpha):
    """The label log-probabilities of the recipient clip's run with `site` of layer `target` mixed with the donor
    clip's at layer `source` on frames [start, end), by plain forward hooks on transformers' own modules; the
    clips read by transformers' feature extractor, padded to `n_samples`; and the frames it is read on."""
    layers = hf.base_model.encoder.layers
    module = {"attn_out": "attention", "mlp_out": "feed_forward"}

    def hooked(layer: int, hook):
        if site == "cnn_out":  # the convolutional feature encoder's output, (N, channels, frames)
            cnn = getattr(hf, hf.base_model_prefix).feature_extractor  # model.wav2vec2 (hubert, wavlm).feature_...
            return cnn.register_forward_hook(lambda _m, _i, out: hook(out.transpose(1, 2)).transpose(1, 2))
        block = layers[layer]
        if site == "resid_pre":
            return block.register_forward_pre_hook(lambda _m, args: (hook(args[0]), *args[1:]))
        part = getattr(block, module[site]) if site in module else block
        return part.register_forward_hook(
            lambda _m, _i, out: (hook(out[0]), *out[1:]) if isinstance(out, tuple) else hook(out)
        )

    def run(audio, layer=None, hook=None):
        inputs = extractor(audio, sampling_rate=16000, padding="max_length", max_length=n_samples, return_tensors="pt")
        handle = hooked(layer, hook) if hook else None
        try:
            logits = hf(inputs.input_values, attention_mask=inputs.get("attention_mask")).logits[0]
        finally:
            if handle:
                handle.remove()
        frames = int(hf._get_feat_extract_output_lengths(len(audio))) if "attention_mask" in inputs else len(logits)
        return torch.log_softmax(logits, -1), frames

    captured = []
    run(donor, source, lambda value: captured.append(value) or value)

    def patch(value):
        mixed = value.clone()
        mixed[:, start:end] = (1 - alpha) * value[:, start:end] + alpha * captured[0][:, start:end]
        return mixed

    return run(recipient, target, patch)


def test_patched_rows_equal_transformers_hooks(ctc_run):
    """Every row's transcript equals transformers' own CTC decoding of the hooked run, and its log-likelihoods
    (torch's CTC loss of the word's labels from the tokenizer) agree within float32 rounding of their size."""
    model, out = ctc_run
    hf = transformers.AutoModelForCTC.from_pretrained(model).eval()
    processor = transformers.AutoProcessor.from_pretrained(model)
    rows = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    index = pd.read_csv(out / "clips/index.csv").set_index("item_id")
    audio = {
        name: load_audio(out / "clips" / name)
        for name in pd.unique(index[["source_clip", "target_clip"]].values.ravel())
    }
    n_samples = 320 * math.ceil(max(map(len, audio.values())) / 320)  # the run's longest clip, whole frames
    assert {"block_out", "resid_pre", "attn_out", "mlp_out", "cnn_out"} == set(rows["site"])
    assert len(rows) == 4 * (4 * 9 + 1) * 2 * 2 * 2  # items x (sites x layer pairs, cnn_out 0->0) x windows x ...
    assert set(zip(*[rows.loc[rows.site == "cnn_out", f"{s}_layer"] for s in ("source", "target")])) == {(0, 0)}
    blocks = rows[rows.site != "cnn_out"]
    checked = blocks.groupby(["site", "window", "alpha", "patch_direction"]).sample(6, random_state=0)
    checked = pd.concat([checked, rows[rows.site == "cnn_out"]])  # every cnn_out row
    for row in checked.itertuples():
        clips = index.loc[row.item_id]
        source, target = audio[clips.source_clip], audio[clips.target_clip]
        recipient, donor = (target, source) if row.patch_direction == "denoising" else (source, target)
        with torch.no_grad():
            log_probs, frames = hooked_log_probs(
                hf, processor.feature_extractor, recipient, donor, n_samples, row.site, row.source_layer,
                row.target_layer, row.window_start, row.window_end, row.alpha,
            )  # fmt: skip
        log_probs = log_probs[:frames]
        decoded = processor.tokenizer.decode(log_probs.argmax(-1).tolist())
        assert row.transcript == " ".join(decoded.lower().split()), row
        for word, logp in ((row.source_word, row.logp_source), (row.target_word, row.logp_target)):
            labels = processor.tokenizer(word.upper()).input_ids
            want = -torch.nn.functional.ctc_loss(
                log_probs.double(), torch.tensor(labels), torch.tensor([frames]), torch.tensor([len(labels)]),
                reduction="sum",
            )  # fmt: skip
            assert abs(logp - float(want)) <= FLOAT32_UNITS * EPS32 * abs(float(want)), (row, logp, float(want))


@pytest.mark.parametrize("kind, stable", MODELS)
def test_a_clip_patched_with_itself_is_its_clean_run(kind, stable, tmp_path, clip_dir):
    """Every site, layer pair, window and alpha: a clip patched with its own activations gives its clean
    log-probabilities exactly (up to float32 rounding where the kernels depend on the batch, `tests/same_rows.py`),
    on clips of different lengths padded to the longer."""
    model = load_model(str(save_ctc_model(kind, tmp_path, stable=stable)))
    generator = np.random.default_rng(0)
    clips = [generator.normal(0, 0.1, n).astype(np.float32) for n in (7000, 12345)]
    n_samples = 320 * math.ceil(12345 / 320)
    inputs = {c: (input_values(audio, n_samples, model.dims), len(audio)) for c, audio in enumerate(clips)}
    patches = [
        Patch(site, s, t, start, end, alpha)
        for site in ("block_out", "resid_pre", "attn_out", "mlp_out", "cnn_out")
        for s, t in (itertools.product(range(3), repeat=2) if site != "cnn_out" else [(0, 0)])
        for start, end in ((0, 1500), (3, 11))
        for alpha in (1.0, 0.5)
    ]
    runs = [PatchedRun(clip, clip, patch) for clip in inputs for patch in patches]
    outputs = encode_plan(model, inputs, runs, set(inputs))
    for run in runs:
        if run.patch.source_layer == run.patch.target_layer:
            clean, patched = outputs.clean[run.recipient_clip], outputs.patched[run]
            got, want = outputs.features[patched], outputs.features[clean]
            if batch_invariant_kernels():  # the patched and clean runs batch the clip with different others
                assert torch.equal(got, want), run
            else:
                allowed = FLOAT32_UNITS * EPS32 * float(want.abs().max())
                torch.testing.assert_close(got, want, rtol=0, atol=allowed, msg=str(run))
            assert outputs.lengths[patched] == outputs.lengths[clean]


@pytest.mark.parametrize("mask", [True, False], ids=["with-mask", "without-mask"])
@pytest.mark.parametrize("normalise", [True, False])
def test_input_values_are_the_feature_extractors(mask, normalise, tmp_path):
    """A clip padded to a longer run is what transformers' feature extractor gives for it in a batch padded to
    that length: normalised over the clip then padded when the extractor returns a mask, padded then normalised
    over the whole array when it does not; a non-zero padding value and an off-centre clip tell the orders apart."""
    transformers.Wav2Vec2Config(**SMALL, vocab_size=len(VOCAB)).save_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps(VOCAB))
    extractor = transformers.Wav2Vec2FeatureExtractor(
        do_normalize=normalise, return_attention_mask=mask, padding_value=0.25
    )
    extractor.save_pretrained(tmp_path)
    audio = np.random.default_rng(0).normal(0.3, 0.1, 7000).astype(np.float32)
    want = extractor(audio, sampling_rate=16000, padding="max_length", max_length=9600, return_tensors="pt")
    got = input_values(audio, 9600, read_dims(tmp_path))
    torch.testing.assert_close(got, want.input_values[0], rtol=0, atol=0)


def brute_force_log_likelihood(log_probs: torch.Tensor, labels: tuple[int, ...], blank: int) -> float:
    """log of the sum, over every path of one label per frame that collapses (repeats merged, blanks dropped) to
    `labels`, of the path's probability."""
    total = []
    for path in itertools.product(range(log_probs.shape[1]), repeat=log_probs.shape[0]):
        merged = [label for i, label in enumerate(path) if i == 0 or path[i - 1] != label]
        if tuple(label for label in merged if label != blank) == labels:
            total.append(sum(float(log_probs[t, label]) for t, label in enumerate(path)))
    return math.log(sum(math.exp(x) for x in total))


@pytest.mark.parametrize("labels", [(1,), (1, 2), (1, 1), (2, 1, 2), (1, 1, 2)])
def test_ctc_measure_is_the_sum_over_alignments(labels):
    """The word log-likelihood equals the brute-force sum over alignments on a 3-label alphabet and 6 frames,
    and a word of two forms is the sum of their probabilities."""
    log_probs = torch.log_softmax(torch.randn(6, 3, generator=torch.Generator().manual_seed(len(labels))), -1)
    want = brute_force_log_likelihood(log_probs, labels, blank=0)
    assert word_log_likelihood(log_probs, ScoredWord((), (labels,)), 0) == pytest.approx(want, abs=1e-9)
    other = (2,)
    both = math.log(math.exp(want) + math.exp(brute_force_log_likelihood(log_probs, other, 0)))
    assert word_log_likelihood(log_probs, ScoredWord((), (labels, other)), 0) == pytest.approx(both, abs=1e-9)


def test_compare_draws_whisper_and_a_ctc_model_on_relative_depth(tmp_path, clip_dir, capsys):
    """`wpatch compare` of a Whisper run (5 encoder blocks) and a HuBERT run (3 layers) on the same pairs: each run
    at its own relative depth, the CTC run's profile from its own rows, its model card named, the figure drawn."""
    pairs = "word_a,word_b\nbat,pat\nship,chip\n"
    runs = {"whisper": tmp_path / "whisper", "hubert": tmp_path / "hubert"}
    for folder in runs.values():
        folder.mkdir()
    whisper = save_checkpoint(random_whisper(dataclasses.replace(SMALL_DIMS, n_audio_layer=5)), tmp_path / "w.pt")
    hubert = save_ctc_model("hubert", tmp_path / "hubert-model", stable=True)
    for name, model in (("whisper", whisper), ("hubert", hubert)):
        main(predict_args(runs[name], str(model), None, "--data.cache_dir", clip_dir, pairs=pairs, max_tokens=2))
    outs = [str(runs[name] / "out") for name in ("whisper", "hubert")]
    wpatch(["compare", *outs, "--out", str(tmp_path / "depth.csv")])
    err = capsys.readouterr().err
    assert "differ in depth (5 encoder and 3 encoder blocks)" in err
    assert "HuBERT d=32 (3 encoder / 0 decoder blocks), Hugging Face CTC model (folder)" in err
    assert (tmp_path / "depth.png").stat().st_size > 10_000
    table = pd.read_csv(tmp_path / "depth.csv")
    ctc = table[table["run"] == outs[1]]
    assert set(ctc["depth"]) == {3} and set(table[table["run"] == outs[0]]["depth"]) == {5}
    assert np.allclose(ctc["relative_depth"], ctc["layer"] / 2)
    rows = pd.read_csv(runs["hubert"] / "out/predictions.csv")
    diagonal = rows[rows.source_layer == rows.target_layer]
    want = diagonal.groupby(["source_layer", "pair_id"])["effect"].mean().groupby(level=0).mean()
    got = ctc[ctc["profile"] == "diagonal (s = t)"].set_index("layer")["mean"].sort_index()
    assert np.allclose(got.to_numpy(), want.to_numpy(), equal_nan=True)


def test_mms_language_picks_its_adapter_and_vocabulary(tmp_path, clip_dir):
    """An MMS-style model with two languages: `--model.language` (ISO 639-3, or a two-letter code wpatch maps)
    loads that language's adapters, head and labels, and its clean run equals transformers' with `target_lang`;
    `wpatch predict` runs on it, and a language without an adapter is refused in one line."""
    folder = save_mms_model(tmp_path / "mms")
    audio = np.random.default_rng(1).normal(0, 0.1, 9000).astype(np.float32)
    extractor = transformers.AutoFeatureExtractor.from_pretrained(folder)
    clean = {}
    for language, key in (("en", "eng"), ("fra", "fra")):
        model = load_model(str(folder), language)
        hf = transformers.Wav2Vec2ForCTC.from_pretrained(folder, target_lang=key, ignore_mismatched_sizes=True)
        head = safetensors.torch.load_file(folder / f"adapter.{key}.safetensors")["lm_head.weight"]
        assert torch.equal(hf.eval().lm_head.weight, head) and torch.equal(model.hf.lm_head.weight, head)
        inputs = extractor(audio, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            want = torch.log_softmax(hf(**inputs).logits[0], -1)
        clip = {0: (input_values(audio, len(audio), model.dims), len(audio))}
        clean[key] = encode_plan(model, clip, [], {0}).features[0]
        torch.testing.assert_close(clean[key], want)
        assert model.dims.labels[-1] == ("É" if key == "fra" else "'") and len(model.dims.labels) == want.shape[-1]
    assert not torch.allclose(clean["eng"], clean["fra"][:, :-1], atol=0.1)  # the adapters differ
    main(predict_args(tmp_path, str(folder), None, "--data.cache_dir", clip_dir, options=("--model.language", "eng")))
    assert len(pd.read_csv(tmp_path / "out/predictions.csv")) == 2 * 9  # 2 items x 9 layer pairs
    with pytest.raises(WpatchError, match="no adapter for language 'de'; give --model.language one of its 2"):
        read_dims(folder, "de")


def test_cnn_out_has_layer_0_only_and_whisper_has_none():
    """The feature encoder's output comes before block 0: from a grid of layer pairs it takes (0, 0) alone, a grid
    without it is refused in one line, and so is the site on Whisper (which has no such site)."""
    specs = patch_specs(layer_pairs(3), ["cnn_out", "block_out"], ["all"], None, [1.0], 1500)
    assert [(p.source_layer, p.target_layer) for p in specs if p.site == "cnn_out"] == [(0, 0)]
    assert len(specs) == 1 + 9
    for sources, targets in (([0], [1, 2]), ([1], [0]), ([1, 2], [1, 2])):
        with pytest.raises(WpatchError, match=r"^site cnn_out comes before encoder block 0 and has layer 0 only; give"):
            patch_specs(layer_pairs(3, sources, targets), ["cnn_out"], ["all"], None, [1.0], 1500)
    with pytest.raises(WpatchError, match=r"^site cnn_out is the wav2vec2 family's; a Whisper model has no such site"):
        check_whisper_sites(["block_out", "cnn_out"])
