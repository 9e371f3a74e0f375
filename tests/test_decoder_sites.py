"""Decoder sites: the fast path equals plain hooks on openai-whisper's decoder (and not hooks one position or
one block off), patches that cannot change anything change nothing, and a run with decoder sites is tidy."""

import dataclasses

import pandas as pd
import pytest
import torch
import whisper

from tests.conftest import SMALL_DIMS, random_whisper
from tests.predict_run import main
from tests.reference import decoder_site_hook, reference_decoder_site
from tests.test_pipeline import run
from wpatch.errors import WpatchError
from wpatch.patching.decoder import DecodingPlan, DecodingRun, decode_plan
from wpatch.patching.encoder import Patch
from wpatch.patching.module import PatchingModule
from wpatch.patching.options import ReadoutOptions
from wpatch.patching.plan import donor_run_tokens, patch_specs
from wpatch.sites import SITES
from wpatch.text import ScoredWord, scoring_prefix, tokenizer_for

WORDS = [(7365,), (6577, 11)]  # a one-token and a two-token donor word
DECODER_SITES = [name for name, site in SITES.items() if site.stack == "decoder"]


@pytest.fixture(scope="module")
def model():
    return random_whisper(seed=6)


@pytest.fixture(scope="module")
def tokenizer(model):
    return tokenizer_for(model.dims)


@pytest.fixture(scope="module")
def features(model):
    """Rows 0-1: the recipients' encoder outputs; rows 2-3: the donors'."""
    return torch.randn(4, 1500, model.dims.n_audio_state, generator=torch.Generator().manual_seed(7))


def scored(tokenizer):
    return [ScoredWord(scoring_prefix(tokenizer), (word,)) for word in WORDS]


def readout(chunk: int) -> ReadoutOptions:
    """English transcripts of at most 8 tokens, `chunk` decodings at a time."""
    return ReadoutOptions(
        language="en", task="transcribe", max_tokens=8, decode_chunk=chunk, min_separation=1.0, word_form="sum"
    )


def fast(model, tokenizer, features, patches, donor_rows=(2, 3), chunk=3):
    """Transcripts and word log-probabilities of the two recipients with patches[i] from donor_rows[i] (donor
    run on WORDS[i]), after the four plain decodings, through `decode_plan` in chunks of `chunk`."""
    prefix = scoring_prefix(tokenizer)
    runs = [DecodingRun(f) for f in range(4)] + [
        DecodingRun(i, patch, donor, (*prefix, *WORDS[i])) for i, (patch, donor) in enumerate(zip(patches, donor_rows))
    ]
    plan = DecodingPlan(runs, {}, {})
    decoded = decode_plan(model, features, plan, [scored(tokenizer)] * len(runs), tokenizer, readout(chunk), False)
    return decoded.transcripts, decoded.logps


def token_patches(site, s, t, alpha, tokenizer):
    return [
        Patch(site, s, t, *donor_run_tokens(ScoredWord(scoring_prefix(tokenizer), (word,)))[1], alpha) for word in WORDS
    ]


def frames_for(alpha):
    """enc_to_dec's frame window in these tests: part of the clip at alpha 0.6, all of it at 1."""
    return (100, 400) if alpha < 1 else (0, 1500)


def hooked(model, tokenizer, features, site, s, t, alpha, shift=0):
    """The same with plain hooks on openai-whisper's decoder: `whisper.decode` and full teacher-forced
    `model.decoder` runs, the patch `shift` positions later."""
    prefix, recipients, donors = list(scoring_prefix(tokenizer)), features[:2], features[2:]
    if site == "enc_to_dec":
        donor, weight = donors, torch.zeros(2, 1500, 1)
        weight[:, slice(*frames_for(alpha))] = alpha
    else:
        rows = [
            reference_decoder_site(model, torch.tensor([prefix + list(word)]), donors[i : i + 1], s, site)[0]
            for i, word in enumerate(WORDS)
        ]
        donor = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        weight = torch.zeros(*donor.shape[:2], 1)
        for i, word in enumerate(WORDS):
            start = len(prefix) - 1 + shift
            weight[i, start : start + len(word)] = alpha
    options = whisper.DecodingOptions(language="en", fp16=False, without_timestamps=True, sample_len=8)
    with torch.no_grad(), decoder_site_hook(model, t, site, donor, weight):
        texts = [r.text.strip() for r in whisper.decode(model, recipients, options)]
        logps = [{}, {}]
        for word, scored_word in zip(WORDS, scored(tokenizer)):
            tokens = torch.tensor([prefix + list(word)] * 2)
            logp = model.decoder(tokens, recipients).log_softmax(-1)
            for i in range(2):
                logps[i][scored_word] = sum(logp[i, len(prefix) - 1 + j, token].item() for j, token in enumerate(word))
    return texts, logps


def max_gap(a, b):
    return max(abs(x[w] - y[w]) for x, y in zip(a, b) for w in x)


def assert_agrees_with_hooks(model, tokenizer, features, site, s, t, alpha) -> list[str]:
    """The fast path equals plain hooks for this patch, and hooks one position later (or on the other block) do
    not; returns the patched transcripts."""
    if site == "enc_to_dec":
        patches = [Patch(site, t, t, *frames_for(alpha), alpha)] * 2
    else:
        patches = token_patches(site, s, t, alpha, tokenizer)
    texts, logps = fast(model, tokenizer, features, patches)
    expected_texts, expected_logps = hooked(model, tokenizer, features, site, s, t, alpha)
    assert texts[4:] == expected_texts, (site, s, t, alpha)
    assert max_gap(logps[4:], expected_logps) < 1e-4, (site, s, t, alpha)
    if site == "enc_to_dec":
        _, off = hooked(model, tokenizer, features, site, s, 1 - t, alpha)
    else:
        _, off = hooked(model, tokenizer, features, site, s, t, alpha, shift=1)
    assert max_gap(logps[4:], off) > 1e-3, (site, s, t, alpha)
    return texts[4:]


@pytest.mark.parametrize("site", DECODER_SITES)
def test_every_decoder_site_agrees_with_plain_hooks_and_not_with_shifted_ones(model, tokenizer, features, site):
    texts = [
        text
        for s in range(2)
        for t in range(2)
        if site != "enc_to_dec" or s == t
        for alpha in (0.6, 1.0)
        for text in assert_agrees_with_hooks(model, tokenizer, features, site, s, t, alpha)
    ]
    assert any(len(text.split()) > 1 for text in texts)  # the greedy comparison ran past the patched positions


@pytest.mark.parametrize("site", ["dec_resid", "dec_cross_out", "enc_to_dec"])
def test_a_multilingual_model_is_patched_after_its_longer_transcript_start(features, site):
    # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>: the word is read out from position 3, not 1
    dims = dataclasses.replace(SMALL_DIMS, n_vocab=51865)
    model, tokenizer = random_whisper(dims, seed=8), tokenizer_for(dims, "en")
    assert len(scoring_prefix(tokenizer)) == 4 and token_patches("dec_resid", 0, 0, 1.0, tokenizer)[0].start == 3
    for s, t in ((1, 1), (0, 1)) if site != "enc_to_dec" else ((1, 1),):
        assert_agrees_with_hooks(model, tokenizer, features, site, s, t, 1.0)


@pytest.mark.parametrize("site", DECODER_SITES)
def test_alpha_zero_and_a_word_patched_into_itself_change_nothing(model, tokenizer, features, site):
    for t in range(2):
        if site == "enc_to_dec":
            nothing, itself = [Patch(site, t, t, 0, 1500, 0.0)] * 2, [Patch(site, t, t, 0, 1500, 1.0)] * 2
        else:
            nothing, itself = (token_patches(site, t, t, alpha, tokenizer) for alpha in (0.0, 1.0))
        texts, logps = fast(model, tokenizer, features, nothing)
        assert texts[4:] == texts[:2] and max_gap(logps[4:], logps[:2]) < 1e-5
        # each recipient's own run as donor, on its own word: that word's probability is unchanged
        texts, logps = fast(model, tokenizer, features, itself, donor_rows=(0, 1))
        for i, word in enumerate(scored(tokenizer)):
            assert abs(logps[4 + i][word] - logps[i][word]) < 1e-5, (site, t, i)
        if site == "enc_to_dec":
            assert texts[4:] == texts[:2]


def test_one_chunk_mixing_every_site_and_block_equals_one_decoding_at_a_time(model, tokenizer, features):
    prefix = scoring_prefix(tokenizer)
    runs = [DecodingRun(f) for f in range(4)]
    for site in DECODER_SITES:
        for s, t in ((0, 0), (1, 0), (1, 1)):
            if site == "enc_to_dec" and s != t:
                continue
            for i, word in enumerate(WORDS):
                positions = donor_run_tokens(ScoredWord(prefix, (word,)))[1]
                patch = Patch(site, s, t, *((100, 400) if site == "enc_to_dec" else positions), 0.8)
                runs.append(DecodingRun(i, patch, 3 - i, (*prefix, *word)))
    plan = DecodingPlan(runs, {}, {})
    asked = [scored(tokenizer)] * len(runs)
    together, alone = (
        decode_plan(model, features, plan, asked, tokenizer, readout(chunk), False) for chunk in (len(runs), 1)
    )
    assert together.transcripts == alone.transcripts
    assert max_gap(together.logps, alone.logps) < 1e-4


def test_decoder_site_settings(small_model_path):
    specs = patch_specs(
        [(0, 0), (0, 1), (1, 1)], ["dec_resid", "enc_to_dec"], ["all", "word"], [10, 10, 30], [1.0], 1500
    )
    dec = [spec for spec in specs if spec.site == "dec_resid"]
    assert {spec.window for spec in dec} == {"tokens"} and len(dec) == 3  # no frame windows, no sweep
    enc = [spec for spec in specs if spec.site == "enc_to_dec"]
    assert all(spec.source_layer == spec.target_layer for spec in enc) and len(enc) == 2 * (2 + 3)
    assert donor_run_tokens(ScoredWord((1, 2, 3), ((7, 8),))) == ((1, 2, 3, 7, 8), (2, 4))
    with pytest.raises(WpatchError, match="enc_to_dec patches decoder block l from no source layer"):
        patch_specs([(0, 1)], ["enc_to_dec"], ["all"], None, [1.0], 1500)
    with pytest.raises(WpatchError, match="source layer 2 is outside the decoder's 2 blocks"):
        PatchingModule(model=small_model_path, sites=["dec_mlp_out"], source_layers=[2])
    # default layers: encoder sites take the encoder's 3 blocks, decoder sites the decoder's 2
    module = PatchingModule(model=small_model_path, sites=["block_out", "dec_resid", "enc_to_dec"])
    layers = {
        site: {(spec.source_layer, spec.target_layer) for spec in module.specs if spec.site == site}
        for site in ("block_out", "dec_resid", "enc_to_dec")
    }
    assert len(layers["block_out"]) == 9 and layers["dec_resid"] == {(s, t) for s in range(2) for t in range(2)}
    assert layers["enc_to_dec"] == {(0, 0), (1, 1)}


def test_a_run_with_decoder_sites_writes_tidy_rows(tmp_path, small_model_path):
    out = tmp_path / "decoder"
    main(
        run(
            tmp_path,
            small_model_path,
            out,
            "--model.sites",
            "[dec_resid, dec_cross_out, enc_to_dec]",
            "--model.source_layers",
            "[0, 1]",
            "--model.target_layers",
            "[0, 1]",
            "--model.alphas",
            "[0.0, 1.0]",
            "--model.directions",
            "[denoising, noising]",
            "--model.control",
            "true",
            "--model.min_separation=-1e9",
            pairs="word_a,word_b,category\nbat,pat,consonant\nhot,cold,semantic\n",
        )
    )
    rows = pd.read_csv(out / "predictions.csv", keep_default_na=False, na_values={"effect": [""]})
    # items x (dec sites x layer pairs x alphas + enc_to_dec s == t x alphas) x patch directions x donors
    assert len(rows) == 4 * (2 * 4 * 2 + 2 * 2) * 2 * 2
    tokens = rows[rows.site != "enc_to_dec"]
    assert set(tokens.window) == {"tokens"} and (tokens.window_start == 1).all()  # after <|sot|><|notimestamps|>
    # the patched positions read out the donor's word: as many as its first surface form has tokens
    tokenizer = tokenizer_for(SMALL_DIMS)
    lengths = tokens.donor_word.map(lambda word: len(tokenizer.encode(" " + word)))
    assert (tokens.window_end - tokens.window_start == lengths).all()
    assert set(tokens.donor) == {"source", "target", "control"}
    assert (rows[rows.site == "enc_to_dec"].source_layer == rows[rows.site == "enc_to_dec"].target_layer).all()
    zero = rows[rows.alpha == 0.0]  # alpha 0 leaves the recipient's clean run: the target's, or the source's
    ld = zero.logp_source - zero.logp_target
    clean = zero.ld_target_clean.where(zero.patch_direction == "denoising", zero.ld_source_clean)
    assert ((ld - clean).abs() < 1e-4).all()
    assert (out / "summary.json").exists() and (out / "figures" / "score_matrix.png").exists()
