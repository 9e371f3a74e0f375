"""A word's written forms ("seven" / "7"): which words have them (checked against Whisper's own English
normaliser), recognition of either form, and the teacher-forced measures under each `--model.word_form` rule,
against log-probabilities computed here with plain openai-whisper calls."""

import math

import pandas as pd
import pytest
import torch
import whisper
from whisper.normalizers import EnglishTextNormalizer

from tests.test_reference import pairs_csv, predict, read_predictions
from wpatch.patching.decoding import cross_attention_cache, word_logprobs
from wpatch.patching.measures import override, retained, transfer
from wpatch.text import is_word, scored_word, spelled_number, tokenizer_for, written_forms, written_tokens


def test_whispers_normaliser_reads_every_spelled_number_back():
    """`spelled_number` against an independent reference: Whisper's `EnglishTextNormalizer` turns the spelling
    into the digits, for every number below 3,000 and around each power of ten to 10^12 (but "one", which it
    leaves as text)."""
    normaliser = EnglishTextNormalizer()
    numbers = [*range(3000), *(10**k + r for k in range(3, 13) for r in (0, 1, 21, 999))]
    assert [n for n in numbers if normaliser(spelled_number(n)) != str(n)] == [1]


@pytest.mark.parametrize(
    "word, forms",
    [
        ("seven", {"spelled": "seven", "numeral": "7"}),
        ("7", {"spelled": "seven", "numeral": "7"}),
        ("Seven", {"spelled": "Seven", "numeral": "7"}),
        ("0", {"spelled": "zero", "numeral": "0"}),
        ("one", {"spelled": "one", "numeral": "1"}),  # the normaliser leaves a lone "one" as text
        ("twenty-one", {"spelled": "twenty-one", "numeral": "21"}),
        ("21", {"spelled": "twenty-one", "numeral": "21"}),
        ("one hundred five", {"spelled": "one hundred five", "numeral": "105"}),
        ("oh", {"word": "oh"}),  # read as 0 by the normaliser, but not how 0 is spelled
        ("hundred", {"word": "hundred"}),
        ("07", {"word": "07"}),
        ("first", {"word": "first"}),  # ordinals keep one form
        ("bat", {"word": "bat"}),
    ],
)
def test_written_forms_of_digits_and_numbers(word, forms):
    assert written_forms(word) == forms


def test_only_english_words_have_a_numeral():
    assert written_forms("seven", "es") == {"word": "seven"} and written_forms("siete", "es") == {"word": "siete"}


def test_either_written_form_is_the_word():
    for word in ("seven", "7", "Seven"):
        assert is_word("7.", word) and is_word(" Seven.", word) and override("7", word) and retained("seven!", word)
    assert transfer("I saw 7 cats.", "seven") and transfer("Twenty-one.", "21") and not transfer("17", "seven")
    assert not is_word("77", "seven") and not is_word("7", "bat") and not is_word("7", "seven", "es")
    assert is_word("One.", "1") and is_word("Zero", "0") and not is_word("Oh.", "0")


@pytest.fixture(scope="module")
def model_and_features():
    """The conftest's small random Whisper (plain openai-whisper) and its encoder output of one noisy clip."""
    from tests.conftest import random_whisper

    model = random_whisper().eval()
    mel = whisper.log_mel_spectrogram(torch.randn(16000, generator=torch.Generator().manual_seed(3)) * 0.1)
    with torch.no_grad():
        features = model.encoder(whisper.pad_or_trim(mel, whisper.audio.N_FRAMES)[None])
    return model, features


def plain_logprob(model, features, tokenizer, text: str) -> float:
    """log P(transcript starts with `text` | features), teacher-forced through `Whisper.logits`, one sequence."""
    prefix = list(tokenizer.sot_sequence_including_notimestamps)
    tokens = prefix + tokenizer.encode(text)
    with torch.no_grad():
        logp = model.logits(torch.tensor([tokens]), features)[0].log_softmax(-1)
    return sum(logp[p - 1, tokens[p]].item() for p in range(len(prefix), len(tokens)))


def test_each_rule_scores_what_plain_whisper_gives(model_and_features):
    """Each `word_form` rule against teacher-forced log-probabilities computed independently: spelled and numeral
    are their surface forms' log-sum-exp, sum the log-sum-exp of the two, best the larger."""
    model, features = model_and_features
    tokenizer = tokenizer_for(model.dims)
    plain = {text: plain_logprob(model, features, tokenizer, text) for text in (" seven", " Seven", " 7")}
    spelled = float(torch.tensor([plain[" seven"], plain[" Seven"]]).logsumexp(0))
    numeral = plain[" 7"]
    expected = {"spelled": spelled, "numeral": numeral, "sum": float(torch.tensor([spelled, numeral]).logsumexp(0))}
    expected["best"] = max(spelled, numeral)
    cross = cross_attention_cache(model, features)
    for rule, value in expected.items():
        for word in ("seven", "7"):
            asked = scored_word(tokenizer, written_tokens(tokenizer, word), word_form=rule)
            # fp32 log-softmax over 51,864 logits, summed over two tokens: a few ulps of ~10 nats
            assert word_logprobs(model, cross, [[asked]])[0][asked] == pytest.approx(value, abs=1e-4), (rule, word)
    assert abs(spelled - numeral) > 1e-2  # the rules differ on this clip, so the comparison tells them apart


def test_a_word_of_one_form_scores_the_same_under_every_rule(model_and_features):
    model, features = model_and_features
    tokenizer = tokenizer_for(model.dims)
    cross = cross_attention_cache(model, features)
    words = [scored_word(tokenizer, written_tokens(tokenizer, "bat"), word_form=rule) for rule in ("sum", "best")]
    words += [scored_word(tokenizer, written_tokens(tokenizer, "bat"), word_form=r) for r in ("spelled", "numeral")]
    logps = word_logprobs(model, cross, [words])[0]
    assert len(set(words)) == 1 and len(logps) == 1


def test_a_run_records_its_rule_and_sums_the_two_forms(tmp_path, small_model_path):
    """The whole pipeline under each rule on the same digit pair: every row's log-probabilities under sum are the
    log-sum-exp of those under spelled and numeral, under best the larger; transcript columns do not move; the rule
    is in summary.json."""
    pairs = pairs_csv(tmp_path / "stimuli", [("7", "three", "en", "en", "digit")])
    runs = {}
    for rule in ("spelled", "numeral", "sum", "best"):
        folder = tmp_path / rule
        folder.mkdir()
        made = predict(folder, small_model_path, "experiment_a", pairs, "--model.word_form", rule)
        runs[rule] = read_predictions(made)
        summary = pd.read_json(made.parent / "summary.json", typ="series")
        assert summary["hparams"]["model"]["word_form"] == rule
    for column in ("logp_source", "logp_target"):
        spelled, numeral = runs["spelled"][column], runs["numeral"][column]
        combined = [math.log(math.exp(a) + math.exp(b)) for a, b in zip(spelled, numeral)]
        assert runs["sum"][column].tolist() == pytest.approx(combined, abs=1e-4)
        assert runs["best"][column].tolist() == pytest.approx(list(map(max, spelled, numeral)), abs=1e-4)
    assert (runs["spelled"]["logp_source"] - runs["numeral"]["logp_source"]).abs().max() > 1e-2
    for column in ("transcript", "override", "retained", "source_recognised"):
        assert all(runs[rule][column].equals(runs["sum"][column]) for rule in runs)
