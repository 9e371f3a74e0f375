"""Patching invariants: the fast path equals a plain forward hook, the diagonal equals the clean run."""

import dataclasses

import pytest
import torch
import whisper

from tests.conftest import SMALL_DIMS, random_whisper
from tests.reference import reference_whole_block_output
from wpatch.errors import WpatchError
from wpatch.models.loading import load_model
from wpatch.patching.decoding import cross_attention_cache, greedy_transcripts, language_probs, sequence_logprobs
from wpatch.patching.encoder import fast_whole_block_outputs, layer_pairs, site_patch, site_states
from wpatch.stimuli.audio import load_audio, log_mel
from wpatch.stimuli.tts import ClipCache, make_backend
from wpatch.text import scoring_prefix, tokenizer_for


def mels_of(words, clip_dir, n_mels=80):
    cache = ClipCache(clip_dir, make_backend("espeak"))
    return torch.stack([log_mel(load_audio(cache.get(w, "en")), n_mels) for w in words])


def assert_fast_path_equals_hooks(model, source_mel, target_mel):
    states, clean = site_states(model.encoder, source_mel, {"block_out"})
    states = states["block_out"]
    pairs = layer_pairs(len(model.encoder.blocks))
    features, slot = fast_whole_block_outputs(model.encoder, states, clean, pairs)
    assert set(slot) == set(pairs) and features.shape[1] == 1 + len(pairs) - len(model.encoder.blocks)
    hooked = torch.stack(
        [reference_whole_block_output(model.encoder, target_mel, states[s], t) for s, t in pairs], dim=1
    )
    fast = torch.stack([features[:, slot[p]] for p in pairs], dim=1)
    assert (fast - hooked).abs().max().item() < 1e-5
    flat = lambda x: x.flatten(0, 1)  # noqa: E731
    transcripts = lambda features: greedy_transcripts(model, cross_attention_cache(model, features), "en")  # noqa: E731
    assert transcripts(flat(fast)) == transcripts(flat(hooked))
    return features, slot, clean


def test_fast_path_equals_hook_path_random_model(clip_dir):
    torch.manual_seed(0)
    model = random_whisper()
    assert_fast_path_equals_hooks(model, mels_of(["bat", "hot"], clip_dir), mels_of(["pat", "cold"], clip_dir))


@pytest.mark.real_weights
def test_fast_path_equals_hook_path_tiny_en(clip_dir):
    model = load_model("tiny.en")
    features, slot, clean = assert_fast_path_equals_hooks(
        model, mels_of(["big", "water"], clip_dir), mels_of(["pig", "house"], clip_dir)
    )
    # the diagonal is the clean run of the source clip: same transcript, same teacher-forced score
    mel = mels_of(["big", "water"], clip_dir)
    options = whisper.DecodingOptions(language="en", fp16=False, without_timestamps=True, sample_len=8)
    clean_text = [r.text for r in whisper.decode(model, mel, options)]
    for layer in range(4):
        assert (
            greedy_transcripts(model, cross_attention_cache(model, features[:, slot[(layer, layer)]]), "en")
            == clean_text
        )
    assert clean_text[0].strip(" .").lower() == "big"  # the real model hears the word


def test_outputs_asked_for_no_word_score_nothing():
    model = random_whisper()
    cross = cross_attention_cache(model, torch.randn(2, 1500, model.dims.n_audio_state))
    assert sequence_logprobs(model, cross, [[], []]) == [[], []]


def test_teacher_forced_scores_match_full_decoder_logits():
    torch.manual_seed(1)
    model = random_whisper()
    prefix = list(scoring_prefix(tokenizer_for(model.dims)))
    features = torch.randn(2, 1500, model.dims.n_audio_state)
    sequences = [[[7365], [6577, 11]], [[1458, 2, 3]]]
    scores = sequence_logprobs(
        model, cross_attention_cache(model, features), [[(prefix, seq) for seq in seqs] for seqs in sequences]
    )
    for f, seqs in enumerate(sequences):
        for j, seq in enumerate(seqs):
            logp = model.logits(torch.tensor([prefix + seq]), features[f : f + 1]).log_softmax(-1)[0]
            expected = sum(logp[len(prefix) - 1 + i, token].item() for i, token in enumerate(seq))
            assert scores[f][j] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("multilingual", [False, True])
def test_greedy_transcripts_equal_whisper_decode(multilingual):
    # a random model's transcripts run to the token cap through arbitrary tokens: any difference in the decoder
    # (cache order, filters, stopping) shows; the multilingual model detects each output's language first
    dims = dataclasses.replace(SMALL_DIMS, n_vocab=51865) if multilingual else SMALL_DIMS
    model = random_whisper(dims, seed=4)
    tokenizer = tokenizer_for(dims, "en")
    with torch.no_grad():  # make the tokens whisper suppresses (blank, non-speech) win unless they are suppressed
        model.decoder.token_embedding.weight[tokenizer.encode(" ") + list(tokenizer.non_speech_tokens)] *= 20
    features = torch.randn(6, 1500, dims.n_audio_state, generator=torch.Generator().manual_seed(5))
    cross = cross_attention_cache(model, features)
    language = None if multilingual else "en"
    options = whisper.DecodingOptions(language=language, fp16=False, without_timestamps=True, sample_len=12)
    expected = whisper.decode(model, features, options)
    if multilingual:
        probs = language_probs(model, cross, tokenizer)
        reference = whisper.detect_language(model, features, tokenizer)[1]
        for mine, theirs in zip(probs, reference):
            assert max(abs(mine[code] - theirs[code]) for code in theirs) < 1e-6
        language = [max(p, key=p.get) for p in probs]
        assert language == [r.language for r in expected]
    texts = [tokenizer.decode([t for t in r.tokens if t < tokenizer.eot]).strip() for r in expected]
    assert greedy_transcripts(model, cross, language, max_tokens=12) == texts
    assert any(len(r.tokens) >= 10 for r in expected)  # the comparison covered long transcripts


def test_hooks_are_removed_even_on_error():
    model = random_whisper()
    block = model.encoder.blocks[1]
    with pytest.raises(AssertionError, match="incorrect audio shape"):
        weight = torch.ones(1, 1500, 1)
        with site_patch(block, "block_out", torch.zeros(1, 1500, model.dims.n_audio_state), weight):
            assert len(block._forward_hooks) == 1
            model.encoder(torch.zeros(1, 80, 10))  # wrong length: the encoder raises
    assert len(block._forward_hooks) == 0


def test_layers_outside_the_model_are_refused():
    assert len(layer_pairs(4)) == 16 and layer_pairs(4, [1], [2, 3]) == [(1, 2), (1, 3)]
    with pytest.raises(WpatchError, match="source layer 4 is outside the encoder's 4 blocks"):
        layer_pairs(4, [4])
    with pytest.raises(WpatchError, match="target layer -1"):
        layer_pairs(4, None, [-1])


@pytest.mark.real_weights
def test_module_diagonal_rows_equal_the_unpatched_run(tmp_path, clip_dir):
    from datamodules import PairDataModule
    from wpatch.patching.module import PatchingModule

    csv = tmp_path / "pairs.csv"
    csv.write_text("word_a,word_b\nbig,pig\nwater,house\n")
    dm = PairDataModule(pairs_file=str(csv), cache_dir=clip_dir, bidirectional=False)
    dm.setup()
    module = PatchingModule()
    batch = next(iter(dm.predict_dataloader()))
    rows = module.predict_step(batch)
    model = module.whisper
    prefix = list(scoring_prefix(module.tokenizer))
    options = whisper.DecodingOptions(language="en", fp16=False, without_timestamps=True, sample_len=8)
    for b, word in enumerate(["big", "water"]):
        mel = batch["source"].mel[b : b + 1]
        text = whisper.decode(model, mel, options)[0].text.strip()
        clean = model.embed_audio(mel)
        forms = []
        for form in (" " + word, " " + word.capitalize()):
            seq = module.tokenizer.encode(form)
            logp = model.logits(torch.tensor([prefix + seq]), clean).log_softmax(-1)[0]
            forms.append(sum(logp[len(prefix) - 1 + i, token] for i, token in enumerate(seq)))
        expected = torch.stack(forms).logsumexp(0).item()
        diagonal = [r for r in rows if r["item_id"] == b and r["source_layer"] == r["target_layer"]]
        assert len(diagonal) == 4
        for row in diagonal:
            assert row["transcript"] == text and row["logp_source"] == pytest.approx(expected, abs=1e-4)


def test_the_modules_options_travel_as_frozen_records_with_the_hparams_as_given(small_model_path):
    """Every `--model.*` option but the model is a field of exactly one record, under its own name; the records
    are frozen (lists as tuples), the recorded hparams stay as given, and the decode chunk `--data.batch_size auto`
    sets is both the run's and the readout's."""
    import inspect

    from wpatch.patching.module import PatchingModule
    from wpatch.patching.options import AttributionOptions, PatchOptions, ReadoutOptions

    records = (PatchOptions, ReadoutOptions, AttributionOptions)
    fields = [f.name for record in records for f in dataclasses.fields(record)]
    assert sorted(fields) == sorted(set(inspect.signature(PatchingModule).parameters) - {"model"})
    module = PatchingModule(model=small_model_path, sites=["block_out", "attn_out"], windows=["all", [0, 10]])
    assert module.patching.sites == ("block_out", "attn_out") and module.patching.windows == ("all", [0, 10])
    assert module.hparams.sites == ["block_out", "attn_out"] and module.attribution.method == "patch"
    with pytest.raises(dataclasses.FrozenInstanceError):
        module.readout.max_tokens = 3
    module.use_decode_chunk(7)
    assert module.readout.decode_chunk == 7 == module.hparams.decode_chunk
