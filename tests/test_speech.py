import re
import time

import numpy as np
import pytest
import soundfile
import torch
import whisper

from wpatch.errors import WpatchError
from wpatch.models.loading import load_model
from wpatch.stimuli.audio import MIN_SPEECH_SECONDS, SAMPLE_RATE, load_audio, log_mel, no_speech
from wpatch.stimuli.tts import ClipCache, Gtts, make_backend
from wpatch.text import normalise

# The 20 words of the notes; espeak-ng en-us+m3 at 150 wpm was measured at 9/20 with tiny.en, greedy.
WORDS = (
    "bat pat cat big pig ship sheep apple orange hot cold telephone hospital chocolate water house bit dog sun moon"
).split()


def test_espeak_clips_are_cached_and_reused(tmp_path):
    cache = ClipCache(tmp_path, make_backend("espeak"))
    first = cache.get("telephone", "en")
    again = ClipCache(tmp_path, make_backend("espeak"))
    assert again.get("telephone", "en") == first and again.synthesized == 0 and cache.synthesized == 1
    audio = load_audio(first)
    assert audio.dtype == np.float32 and 0.3 * SAMPLE_RATE < len(audio) < 3 * SAMPLE_RATE
    assert np.abs(audio).max() > 0.05
    # a different voice, text or setting is a different clip; nothing half-written is left behind
    assert cache.path("telephone", "es") != first
    assert ClipCache(tmp_path, make_backend("espeak"), {"en": "en-us"}).path("telephone", "en") != first
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".partial")]


def test_spanish_voice_speaks(tmp_path):
    audio = load_audio(ClipCache(tmp_path, make_backend("espeak")).get("teléfono", "es"))
    assert len(audio) > 0.3 * SAMPLE_RATE


def test_piper_voice_speaks(tmp_path):
    audio = load_audio(ClipCache(tmp_path, make_backend("piper")).get("hospital", "en"))
    assert len(audio) > 0.3 * SAMPLE_RATE and np.abs(audio).max() > 0.05


@pytest.mark.parametrize("backend, voice", [("espeak", "xx-nope"), ("piper", "en_US-nobody"), ("gtts", "xx")])
def test_unknown_voice_is_named(backend, voice):
    with pytest.raises(WpatchError, match=re.escape(voice)):
        make_backend(backend).check_voice(voice)


def test_unknown_backend_is_named():
    with pytest.raises(WpatchError, match="unknown TTS backend 'festival'"):
        make_backend("festival")


def test_gtts_offline_fails_fast_and_writes_nothing(tmp_path):
    start = time.time()
    with pytest.raises(WpatchError, match="gtts needs the internet"):
        ClipCache(tmp_path, Gtts()).get("cat", "en")
    assert time.time() - start < 15 and not list(tmp_path.rglob("*.wav"))


@pytest.mark.parametrize("fmt, rate, channels", [("wav", 22050, 1), ("flac", 44100, 2), ("mp3", 24000, 1)])
def test_recordings_load_as_16k_mono_float(tmp_path, fmt, rate, channels):
    t = np.arange(int(0.5 * rate)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / f"tone.{fmt}"
    soundfile.write(path, np.stack([tone] * channels, axis=1), rate)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and abs(len(audio) - SAMPLE_RATE // 2) < 0.02 * SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(audio) - 440) < 5


def test_missing_or_unreadable_audio_is_named(tmp_path):
    with pytest.raises(WpatchError, match="does not exist"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(WpatchError, match="is a directory, not an audio file"):
        load_audio(tmp_path)
    (tmp_path / "bad.wav").write_bytes(b"RIFF garbage")
    with pytest.raises(WpatchError, match="cannot be read"):
        load_audio(tmp_path / "bad.wav")


@pytest.mark.real_weights
def test_real_tiny_en_recognises_synthesised_words(clip_dir):
    cache = ClipCache(clip_dir, make_backend("espeak"))
    mels = torch.stack([log_mel(load_audio(cache.get(w, "en")), 80) for w in WORDS])
    options = whisper.DecodingOptions(language="en", fp16=False, without_timestamps=True, sample_len=8)
    results = whisper.decode(load_model("tiny.en"), mels, options)
    correct = sum(normalise(r.text) == w for r, w in zip(results, WORDS))
    assert correct >= 9, [r.text for r in results]


def test_a_clip_without_speech_is_told_apart():
    rate = SAMPLE_RATE
    word = 0.2 * np.sin(2 * np.pi * 300 * np.arange(rate // 2) / rate)
    assert no_speech(word) is None and no_speech(np.concatenate([np.zeros(rate), word])) is None
    assert "-120 dBFS, below -60 dBFS" in no_speech(np.zeros(rate))
    assert "below -60 dBFS" in no_speech(1e-4 * np.random.default_rng(0).standard_normal(rate))  # -80 dBFS hiss
    assert no_speech(0.5 * np.ones(rate // 100)) == f"is 0.010 s long, under {MIN_SPEECH_SECONDS} s"


def test_espeak_is_reproducible_whatever_came_before():
    espeak = make_backend("espeak")
    first, rate = espeak.synthesize("bat", "en-us+m3")
    espeak.synthesize("telephone", "es")
    again, _ = espeak.synthesize("bat", "en-us+m3")
    assert rate == 22050 and np.array_equal(first, again)
