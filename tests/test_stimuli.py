"""The packaged stimulus sets: rebuilt byte for byte from the installed sources, and what they promise."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from scripts.build_stimuli import SETS, build
from tests.conftest import SMALL_DIMS, random_whisper
from wpatch.errors import WpatchError
from wpatch.patching.decoding import cross_attention_cache, word_logprobs
from wpatch.stimuli.pairs_file import PACKAGED, check_word_tokens, read_pairs
from wpatch.stimuli.sets import (
    CONSONANTS,
    FEATURES,
    has_homophone,
    heard_shares,
    is_vowel,
    pair_heard,
    pick,
    pronunciations,
)
from wpatch.stimuli.tts import ClipCache, make_backend
from wpatch.text import before, scored_word, tokenizer_for, word_tokens


@pytest.fixture(scope="module")
def english():
    return pd.read_csv(PACKAGED["english"], dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def english_spanish():
    return pd.read_csv(PACKAGED["english_spanish"], dtype=str, keep_default_na=False)


def test_builder_reproduces_the_shipped_files(tmp_path):
    for path in build(tmp_path):
        assert path.read_bytes() == (PACKAGED["english"].parent / path.name).read_bytes(), path.name
    assert set(SETS) == {p.name for p in tmp_path.iterdir()}


def test_english_counts_kinds_and_no_duplicates(english):
    assert len(english) == 869
    assert english["category"].value_counts().to_dict() == {"consonant": 400, "vowel": 300, "semantic": 169}
    unordered = english.apply(lambda r: frozenset((r.word_a, r.word_b)), axis=1)
    assert not unordered.duplicated().any() and (english.word_a != english.word_b).all()
    assert english.pair_id.is_unique
    read_pairs("english")  # passes the pairs-file checks


def test_minimal_pairs_differ_in_exactly_the_stated_phoneme(english):
    minimal = english[english.category != "semantic"]
    for row in minimal.itertuples():
        a, b = row.pron_a.split(), row.pron_b.split()
        assert len(a) == len(b) and [pronunciations()[row.word_a][0], pronunciations()[row.word_b][0]] == [
            tuple(a),
            tuple(b),
        ]
        differ = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        assert len(differ) == 1 and (a[differ[0]], b[differ[0]]) == (row.phoneme_a, row.phoneme_b)
        nucleus = next(i for i, p in enumerate(a) if is_vowel(p))
        position = "nucleus" if differ[0] == nucleus else "onset" if differ[0] < nucleus else "coda"
        assert row.position == position
        if row.category == "consonant":
            changed = [f for f, x, y in zip(FEATURES, CONSONANTS[row.phoneme_a], CONSONANTS[row.phoneme_b]) if x != y]
            assert row.feature == "+".join(changed) and changed
        else:
            assert is_vowel(row.phoneme_a) and is_vowel(row.phoneme_b)


def test_no_homophones_and_no_pair_that_sounds_the_same(english):
    words = set(english.word_a) | set(english.word_b)
    assert not [w for w in words if has_homophone(w)]
    for row in english.itertuples():
        assert not set(pronunciations()[row.word_a]) & set(pronunciations()[row.word_b]), (row.word_a, row.word_b)
    assert (english.zipf_a.astype(float) >= 3.0).all() and (english.zipf_b.astype(float) >= 3.0).all()


def test_english_spanish_pairs(english_spanish):
    assert len(english_spanish) == 162
    assert english_spanish["category"].value_counts().to_dict() == {"cognate": 81, "non-cognate": 81}
    assert set(english_spanish.lang_a) == {"en"} and set(english_spanish.lang_b) == {"es"}
    assert not english_spanish.word_a.duplicated().any() and not english_spanish.word_b.duplicated().any()
    similarity = english_spanish.groupby("category")["spelling_similarity"].apply(lambda s: s.astype(float).mean())
    assert similarity["cognate"] > 0.6 > 0.3 > similarity["non-cognate"]
    row = english_spanish.set_index("word_a").loc["telephone"]
    assert row.word_b == "teléfono" and float(row.spelling_similarity) == pytest.approx(1 - 3 / 9, abs=0.01)


def test_every_word_is_synthesisable_offline(english, english_spanish, clip_dir):
    """English words by hibari (the default speaker), Spanish words by espeak (Kokoro's Spanish phonemes come
    from the same eSpeak NG)."""
    english_words = sorted(set(english.word_a) | set(english.word_b) | set(english_spanish.word_a))
    short = []
    for backend, lang, words in (
        ("hibari", "en", english_words),
        ("espeak", "es", sorted(set(english_spanish.word_b))),
    ):
        cache = ClipCache(clip_dir, make_backend(backend))
        for word in words:
            samples, rate = cache.backend.synthesize(word, cache.voice(lang))
            if len(samples) < 0.15 * rate or np.abs(samples).max() < 1000:
                short.append((backend, word))
    assert not short


def test_word_choice_prefers_pairs_whose_words_are_heard():
    candidates = pd.DataFrame(
        {
            "word_a": ["bat", "cap", "dig", "fan"],
            "word_b": ["pat", "gap", "big", "van"],
            "category": "consonant",
            "feature": ["voicing", "voicing", "voicing", "voicing"],
            "zipf_a": [5.0, 4.0, 3.5, 3.0],
            "zipf_b": [5.0, 4.0, 3.5, 3.0],
        }
    )
    assert pick(candidates, 2)[["word_a"]].squeeze().tolist() == ["bat", "cap"]  # by frequency, as before
    heard = {"bat": 1.0, "pat": 0.0, "cap": 1.0, "gap": 0.5, "dig": 1.0, "big": 1.0, "fan": 1.0}  # van never screened
    assert pick(candidates, 2, heard)[["word_a"]].squeeze().tolist() == ["dig", "cap"]
    assert pair_heard(candidates, heard).tolist() == [0.0, 0.5, 1.0, 0.0]
    screen = pd.DataFrame({"word": ["bat", "bat", "pat"], "heard": [True, False, False]})
    assert heard_shares(screen) == {"bat": 0.5, "pat": 0.0}


def test_heard_set_keeps_the_kinds_and_is_heard_on_the_shipped_screening():
    from scripts.build_stimuli import SHIPPED_SCREEN

    heard_set = pd.read_csv(PACKAGED["english_heard"], dtype=str, keep_default_na=False)
    original = pd.read_csv(PACKAGED["english"], dtype=str, keep_default_na=False)
    assert heard_set.category.value_counts().to_dict() == original.category.value_counts().to_dict()
    assert not heard_set.duplicated(["word_a", "word_b"]).any()
    shares = heard_shares(pd.read_csv(SHIPPED_SCREEN, keep_default_na=False))
    slots = pd.concat([heard_set.word_a, heard_set.word_b]).map(shares)
    assert slots.notna().all(), "every word of the heard set was screened"
    assert slots.mean() >= 0.9 > pd.concat([original.word_a, original.word_b]).map(shares).mean()


def test_a_word_is_refused_exactly_where_the_decoder_could_not_read_it(tmp_path):
    """The check of a pairs file's words against the decoder's context agrees with the decoder itself, alone and
    in a carrier sentence, on both sides of the limit (a small context keeps it quick)."""
    dims = dataclasses.replace(SMALL_DIMS, n_text_ctx=16)
    model = random_whisper(dims)
    tokenizer = tokenizer_for(dims)
    cross = cross_attention_cache(model, model.encoder(torch.zeros(1, dims.n_mels, 3000)))
    path = tmp_path / "pairs.csv"

    def accepted(word: str, carrier: str) -> bool:
        path.write_text(f"word_a,word_b,carrier\ncat,{word},{carrier}\n")
        try:
            check_word_tokens(read_pairs(path), dims, path)
        except WpatchError as error:
            assert "line 2: word_b 'cat cat" in str(error) and "decoder's 16-token context" in str(error)
            return False
        return True

    def decoded(word: str, carrier: str) -> bool:
        try:
            word_logprobs(model, cross, [[scored_word(tokenizer, word_tokens(tokenizer, word), before(carrier))]])
        except RuntimeError:
            return False
        return True

    for carrier in ("", "say {} again"):
        outcomes = []
        for n in range(10, 18):  # " cat" is one token: with the transcript start the context's 16 are reached
            word = " ".join(["cat"] * n)
            outcomes.append(accepted(word, carrier))
            assert outcomes[-1] == decoded(word, carrier), (n, carrier)
        assert set(outcomes) == {True, False}, carrier
