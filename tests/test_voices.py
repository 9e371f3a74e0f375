"""The neural offline voices (hibari, Kokoro), speakers as `--data.tts` entries, and screening."""

import re

import numpy as np
import pandas as pd
import pytest
import torch
import whisper

from datamodules import PairDataModule
from wpatch.analysis.stats import bootstrap_interval
from wpatch.errors import WpatchError
from wpatch.models.loading import load_model
from wpatch.sides import Pair, Side
from wpatch.stimuli.audio import SAMPLE_RATE, load_audio, log_mel
from wpatch.stimuli.screening import cached_screen, screen_clips, screen_summary
from wpatch.stimuli.tts import ClipCache, make_backend, parse_speaker
from wpatch.text import normalise

# The 40 words: the default voice must be heard on at least 30 of them by tiny.en.
WORDS_40 = (
    "bat pat big pig cat hat ship sheep bit dog apple orange hot cold fan van thin sin cheap jeep pen pan "
    "full fool cot coat sit set bed bad king queen river mountain happy sad winter summer bread butter"
).split()


@pytest.mark.parametrize(
    "backend, voice, word",
    [("hibari", "heart", "telephone"), ("kokoro", "am_adam", "hospital"), ("kokoro", "ef_dora", "teléfono")],
)
def test_neural_voices_speak_the_same_bytes_every_time(tmp_path, backend, voice, word):
    lang = "es" if voice.startswith("e") else "en"
    first = ClipCache(tmp_path / "one", make_backend(backend), {lang: voice}).get(word, lang)
    second = ClipCache(tmp_path / "two", make_backend(backend), {lang: voice}).get(word, lang)
    assert first.read_bytes() == second.read_bytes()
    audio = load_audio(first)  # 24 kHz on disk, 16 kHz here
    assert 0.3 * SAMPLE_RATE < len(audio) < 3 * SAMPLE_RATE and np.abs(audio).max() > 0.05


@pytest.mark.parametrize(
    "backend, voice, message",
    [
        ("hibari", "emma", "downloads from the internet on first use; use heart"),
        ("hibari", "nobody", "hibari has no voice 'nobody'"),
        ("kokoro", "jf_alpha", "kokoro has no voice 'jf_alpha' offline; use one of af_bella"),
    ],
)
def test_voices_that_are_not_offline_are_refused_with_one_line(backend, voice, message):
    with pytest.raises(WpatchError, match=re.escape(message)) as error:
        make_backend(backend).check_voice(voice)
    assert "\n" not in str(error.value)


def test_a_speaker_entry_sets_the_voice_of_the_language_it_speaks(tmp_path):
    assert parse_speaker("hibari") == ("hibari", {})
    assert parse_speaker("kokoro:bm_lewis") == ("kokoro", {"en": "bm_lewis"})
    assert parse_speaker("kokoro:em_santa") == ("kokoro", {"es": "em_santa"})
    assert parse_speaker("espeak:en-us") == ("espeak", {"en": "en-us"})
    data = PairDataModule(
        pairs_file="english_spanish", tts=["kokoro", "kokoro:af_heart", "espeak"], cache_dir=str(tmp_path)
    )
    assert data.clips["kokoro"].voices == {"en": "am_adam", "es": "em_alex"}
    assert data.clips["kokoro:af_heart"].voices == {"en": "af_heart", "es": "em_alex"}
    assert data.clips["espeak"].voices == {"en": "en-us+m3", "es": "es"}
    with pytest.raises(WpatchError, match="hibari speaks only en, not 'es'; use --data.tts kokoro or espeak"):
        ClipCache(tmp_path, make_backend("hibari")).voice("es")
    with pytest.raises(WpatchError, match="kokoro speaks only en and es, not 'fr'; use --data.tts espeak"):
        ClipCache(tmp_path, make_backend("kokoro")).voice("fr")
    with pytest.raises(WpatchError, match="espeak has no voice for language 'fr'; give one with --data.voices"):
        ClipCache(tmp_path, make_backend("espeak")).voice("fr")


@pytest.mark.parametrize(
    "speaker, message",
    [
        ("kokoro:nonexistent", "kokoro has no voice 'nonexistent' offline; use one of af_bella, af_heart"),
        ("hibari:nobody", "hibari has no voice 'nobody'; its voices are heart, emma"),
        ("piper:en_US-nobody", "piper has no voice 'en_US-nobody'; use en_US-joe-medium"),
        ("espeak:xx-nope", "espeak has no voice 'xx-nope'"),
        ("gtts:xx", "gtts has no language 'xx'"),
    ],
)
def test_a_speaker_with_an_unknown_voice_is_refused(speaker, message, tmp_path):
    """Not read as a language from its first letter and spoken by the default voice under the wrong label."""
    with pytest.raises(WpatchError, match=re.escape(message)):
        parse_speaker(speaker)
    with pytest.raises(WpatchError, match=re.escape(message)):
        PairDataModule(tts=["hibari", speaker], cache_dir=str(tmp_path))


def test_a_piper_voice_file_speaks_the_language_its_name_says(tmp_path):
    voice = tmp_path / "models" / "es_ES-davefx-medium.onnx"
    voice.parent.mkdir()
    voice.write_bytes(b"")
    assert parse_speaker(f"piper:{voice}") == ("piper", {"es": str(voice)})


def test_screening_equals_whisper_decode_and_its_cache_is_reused(small_model_path, clip_dir, tmp_path):
    words = ["cat", "ship", "river"]
    cache = ClipCache(clip_dir, make_backend("hibari"))
    mels = torch.stack([log_mel(load_audio(cache.get(w, "en")), 80) for w in words])
    model = load_model(small_model_path)
    screen = screen_clips(model, mels, words, ["en"] * 3, batch_size=2)
    options = whisper.DecodingOptions(language="en", fp16=False, without_timestamps=True, sample_len=8)
    expected = [r.text for r in whisper.decode(model, mels, options)]
    assert screen["transcript"].tolist() == expected
    assert screen["heard"].tolist() == [normalise(t) == w for t, w in zip(expected, words)]
    assert (screen["logp"] < 0).all()
    first = cached_screen(lambda: model, "small", mels, words, ["en"] * 3, tmp_path)

    def no_model():
        raise AssertionError("the model was loaded although every clip was screened before")

    again = cached_screen(no_model, "small", mels[[2, 0]], [words[2], words[0]], ["en"] * 2, tmp_path)
    pd.testing.assert_frame_equal(again, first.iloc[[2, 0]].reset_index(drop=True))
    pd.testing.assert_frame_equal(first[["transcript", "heard"]], screen[["transcript", "heard"]])


def test_screen_summary_counts_clips_per_voice_and_category():
    screen = pd.DataFrame(
        {
            "word": ["a", "b", "c", "a"],
            "lang": "en",
            "voice": ["v1", "v1", "v1", "v2"],
            "heard": [True, False, True, False],
        }
    )
    pairs = [Pair("p0", Side("a"), Side("b"), category="x"), Pair("p1", Side("c"), Side("a"), category="y")]
    items = pd.DataFrame({"pair": pairs, "source": [p.a for p in pairs], "target": [p.b for p in pairs], "voice": "v1"})
    summary = screen_summary(screen, items).set_index(["voice", "category"])
    assert summary.loc[("v1", "all"), ["clips", "heard"]].tolist() == [3, 2]
    assert summary.loc[("v2", "all"), ["clips", "heard"]].tolist() == [1, 0]
    assert summary.loc[("v1", "x"), ["clips", "heard"]].tolist() == [2, 1]  # a (heard) and b (not)
    assert summary.loc[("v1", "y"), ["clips", "heard"]].tolist() == [2, 2]  # c and a, both heard


def test_interval_over_pairs_and_voices_widens_when_voices_disagree():
    rng = np.random.default_rng(1)
    pairs = rng.normal(0.5, 0.05, 40)
    agreeing = np.stack([pairs, pairs + 0.01], axis=1)
    disagreeing = np.stack([pairs - 0.4, pairs + 0.4], axis=1)
    low_a, high_a = bootstrap_interval(agreeing)
    low_d, high_d = bootstrap_interval(disagreeing)
    assert low_a < 0.505 < high_a and high_a - low_a < 0.05
    assert high_d - low_d > 0.5  # a voice-dependent result is not hidden behind many pairs
    # missing cells (a pair not run with a voice) are skipped, not counted as zeros
    holes = agreeing.copy()
    holes[::2, 1] = np.nan
    low_h, high_h = bootstrap_interval(holes)
    assert low_h < 0.51 < high_h


@pytest.mark.real_weights
def test_default_voice_is_heard_on_30_of_the_40_words(clip_dir):
    data = PairDataModule(model="tiny.en", cache_dir=clip_dir)
    assert list(data.clips) == ["hibari"]  # the default speaker
    cache = data.clips["hibari"]
    mels = torch.stack([log_mel(load_audio(cache.get(w, "en")), 80) for w in WORDS_40])
    options = whisper.DecodingOptions(language="en", fp16=False, without_timestamps=True, sample_len=8)
    texts = [r.text for r in whisper.decode(load_model("tiny.en"), mels, options)]
    heard = [w for t, w in zip(texts, WORDS_40) if normalise(t) == w]
    assert len(heard) >= 30, list(zip(WORDS_40, texts))


@pytest.mark.real_weights
def test_require_heard_keeps_only_items_whose_clips_the_model_hears(tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("word_a,word_b\nbat,pat\nbig,pig\nking,queen\n")
    kept = {}
    for mode in ("none", "source", "both"):
        data = PairDataModule(
            pairs_file=str(pairs), model="tiny.en", require_heard=mode, cache_dir=str(tmp_path / "clips")
        )
        data.prepare_data()
        data.setup("predict")
        kept[mode] = data
    screen = kept["none"].screen().set_index("word")["heard"]
    items = kept["none"].items
    assert len(items) == 6 and kept["none"].screening == {}
    source_ok = items[items["source"].map(lambda side: screen[side.word])]
    both_ok = source_ok[source_ok["target"].map(lambda side: screen[side.word])]
    assert kept["source"].items["item_id"].tolist() == source_ok["item_id"].tolist()
    assert kept["both"].items["item_id"].tolist() == both_ok["item_id"].tolist()
    counts = kept["source"].screening
    assert (
        counts["items"] == 6 and counts["items_kept"] == len(source_ok) and counts["clips_heard"] == int(screen.sum())
    )
    with pytest.raises(WpatchError, match="require_heard 'all' is not one of none, source, both"):
        PairDataModule(pairs_file=str(pairs), require_heard="all")
