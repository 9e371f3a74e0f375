"""Natural recordings: a labelled folder read by a file-name pattern and translation-aligned soundtheme word lists,
on small fixtures (spoken by the offline eSpeak NG voice, written at the rates and formats the real corpora use)
and on the real ones where they are here (the Free Spoken Digit Dataset in ../shared/data/fsdd, Debian's
ktuberling-data); their pairs run end to end and the analysis groups the rows by same and different speaker."""

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
import torchaudio.functional

from tests.conftest import SMALL_DIMS, random_whisper, save_checkpoint
from tests.predict_run import main as predict
from tests.predict_run import predict_args
from tests.test_corpora import spoken
from wpatch.cli import main
from wpatch.errors import WpatchError
from wpatch.stimuli.audio import SAMPLE_RATE, load_audio
from wpatch.stimuli.pattern_folder import pattern_regex, read_pattern_folder, speaker_pairs
from wpatch.stimuli.soundthemes import language_list, read_soundthemes

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent.parent / "shared" / "data" / "fsdd"
KTUBERLING = Path("/usr/share/ktuberling/sounds")
VOICES = {"amy": "en-us+f2", "bob": "en-us+m3"}
README = """# Two voices

| speaker | gender | accent |
|---|---|---|
| amy | female | Scottish |
| bob | male | Texan, rural |

Licence: Creative Commons Attribution-ShareAlike 4.0 International (CC BY-SA 4.0), as stated.
"""


def build(corpus: Path, out: Path, *options: str) -> pd.DataFrame:
    main(["stimuli", str(corpus), "--out", str(out), *options])
    return pd.read_csv(out, dtype=str, keep_default_na=False)


def at_8khz(clip: np.ndarray) -> np.ndarray:
    return torchaudio.functional.resample(torch.from_numpy(clip), SAMPLE_RATE, 8000).numpy()


def digits_folder(root: Path) -> Path:
    """`{word}_{speaker}_{take}.wav` at 8 kHz (as FSDD): three words, two speakers, two takes each (the second
    take 10% quieter, so takes differ), a README with the accents, and one file that does not match."""
    root.mkdir(parents=True)
    for speaker, voice in VOICES.items():
        for word in ("one", "two", "six"):
            for take in (0, 1):
                clip = spoken(word, voice) * (1 - 0.1 * take)
                soundfile.write(root / f"{word}_{speaker}_{take}.wav", at_8khz(clip), 8000)
    soundfile.write(root / "warmup-take.wav", spoken("one", VOICES["amy"]), SAMPLE_RATE)
    (root / "README.md").write_text(README)
    return root


def test_a_pattern_folder_pairs_within_and_across_speakers_deterministically(tmp_path, caplog):
    folder = digits_folder(tmp_path / "digits")
    with caplog.at_level(logging.WARNING):
        pairs = build(folder, tmp_path / "pairs.csv", "--pattern", "{word}_{speaker}_{take}.wav")
    assert "1 audio files in" in caplog.text and "warmup-take.wav" in caplog.text
    # 3 word pairs x 2 speakers saying word A x (same speaker, other speaker)
    assert len(pairs) == 12 and set(zip(pairs.word_a, pairs.word_b)) == {("one", "six"), ("one", "two"), ("six", "two")}
    assert (pairs.speaker_a != "").all() and (pairs.speaker_b != "").all()
    same = pairs.speaker_a == pairs.speaker_b
    assert same.sum() == 6 and (~same).sum() == 6
    accents = {"amy": "Scottish", "bob": "Texan, rural"}
    for side in "ab":
        assert (pairs[f"accent_{side}"] == pairs[f"speaker_{side}"].map(accents)).all()
        names = pairs[f"audio_{side}"].map(lambda p: Path(p).name)
        assert (
            names == pairs[f"word_{side}"] + "_" + pairs[f"speaker_{side}"] + "_" + pairs[f"take_{side}"] + ".wav"
        ).all()
        assert all((tmp_path / audio).resolve().is_file() for audio in pairs[f"audio_{side}"])
    assert (pairs.licence == "CC BY-SA 4.0").all() and (pairs.corpus == "digits").all() and (pairs.lang_a == "en").all()

    again = build(folder, tmp_path / "again.csv", "--pattern", "{word}_{speaker}_{take}.wav")
    assert again.equals(pairs)
    seeds = [
        build(folder, tmp_path / f"s{s}.csv", "--pattern", "{word}_{speaker}_{take}.wav", "--seed", str(s))
        for s in range(1, 6)
    ]
    assert any(not (s[["take_a", "take_b"]].values == pairs[["take_a", "take_b"]].values).all() for s in seeds)
    within = build(
        folder, tmp_path / "w.csv", "--pattern", "{word}_{speaker}_{take}.wav", "--same-speaker", "--per-pair", "2"
    )
    assert len(within) == 12 and (within.speaker_a == within.speaker_b).all()
    assert not within.duplicated(["audio_a", "audio_b"]).any()  # a speaker's two takes of word A, then both of B


def test_pattern_fields_subfolders_and_the_language_field(tmp_path):
    regex = pattern_regex("{speaker}/{language}-{word}.{take}.flac")
    match = regex.fullmatch("ann/es-gato.3.flac")
    assert match.groupdict() == {"speaker": "ann", "language": "es", "word": "gato", "take": "3"}
    assert regex.fullmatch("ann/sub/es-gato.3.flac") is None  # a field never spans folders
    assert pattern_regex("{word}_{speaker}_{take}.wav").fullmatch("7_jackson_32.wav").group("word") == "7"
    assert pattern_regex("a.{word}").fullmatch("abword") is None  # the dot is literal
    for speaker in ("ann", "ben"):
        for name in ("es-gato.0.flac", "es-perro.0.flac"):
            path = tmp_path / "f" / speaker / name
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, spoken("gato", VOICES["amy"]), SAMPLE_RATE, format="FLAC")
    found = read_pattern_folder(tmp_path / "f", "{speaker}/{language}-{word}.{take}.flac", "en", "f", None)
    assert {(r.language, r.speaker, r.word, r.licence, r.accent) for r in found} == {
        ("es", s, w, "", "") for s in ("ann", "ben") for w in ("gato", "perro")
    }
    pairs = speaker_pairs(found, seed=3)
    assert len(pairs) == 4 and {p.a.language for p in pairs} == {"es"}


def sine(frequency: float, rate: int, seconds: float, gain: float) -> np.ndarray:
    return (gain * np.sin(2 * np.pi * frequency * np.arange(round(rate * seconds)) / rate)).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "rate", "options", "tolerance"),
    [
        # lossless: only the resampler's error (torchaudio's windowed sinc: under 1e-3 of full scale at 440 Hz)
        ("stereo.flac", 48000, {"format": "FLAC"}, 2e-3),
        ("stereo.wav", 44100, {"subtype": "FLOAT"}, 2e-3),
        # lossy: the codec's error on a pure tone, far under the tone's 0.75 amplitude (measured ~1e-2)
        ("stereo.ogg", 44100, {"format": "OGG", "subtype": "VORBIS"}, 0.05),
        ("stereo.opus", 48000, {"format": "OGG", "subtype": "OPUS"}, 0.05),
    ],
)
def test_a_stereo_recording_at_any_rate_is_heard_as_its_mix_at_16_khz(tmp_path, name, rate, options, tolerance):
    left, right = sine(440, rate, 1.0, 0.5), sine(440, rate, 1.0, 1.0)
    soundfile.write(tmp_path / name, np.stack([left, right], axis=1), rate, **options)
    heard = load_audio(tmp_path / name)
    expected = sine(440, SAMPLE_RATE, 1.0, 0.75)  # the two channels' mean, at 16 kHz
    assert abs(len(heard) - len(expected)) <= SAMPLE_RATE // 100  # codecs may pad by a few ms
    # opus delays by its pre-skip; compare where both are away from the edges, at the best lag of +-10 ms
    middle = slice(SAMPLE_RATE // 10, SAMPLE_RATE // 10 * 8)
    error = min(
        np.abs(heard[middle.start + lag : middle.stop + lag] - expected[middle]).max() for lag in range(-160, 161)
    )
    assert error < tolerance


def soundthemes(root: Path) -> Path:
    """en (ogg, 44.1 kHz stereo, a theme-prefixed object), es (8 kHz wav, one entry's file missing), de (files
    named by the English objects: no German text)."""
    for lang in ("en", "es", "de"):
        (root / lang).mkdir(parents=True)
    english = {"eye": "eye", "hat": "hat", "egypt_camel": "camel", "nose": "nose"}
    for name, word in english.items():
        clip = spoken(word, VOICES["bob"])
        soundfile.write(root / "en" / f"{name}.ogg", np.stack([clip, clip], 1), SAMPLE_RATE, format="OGG")
    spanish = {"eye": "ojo", "hat": "sombrero", "egypt_camel": "camello"}
    for name, word in spanish.items():
        soundfile.write(root / "es" / f"{word}.wav", at_8khz(spoken(word, VOICES["amy"])), 8000)
    for name in english:
        soundfile.write(root / "de" / f"{name}.ogg", spoken(name, VOICES["amy"]), SAMPLE_RATE, format="OGG")

    def theme(lang, entries):
        sounds = "".join(f'  <sound name="{name}" file="{lang}/{file}" />\n' for name, file in entries)
        (root / f"{lang}.soundtheme").write_text(f'<language code="{lang}">\n{sounds}</language>\n')

    theme("en", [(name, f"{name}.ogg") for name in english])
    theme("es", [(name, f"{word}.wav") for name, word in spanish.items()] + [("nose", "nariz.wav")])
    theme("de", [(name, f"{name}.ogg") for name in english])
    return root


def test_translation_aligned_word_lists_pair_each_object_both_languages_name(tmp_path, caplog):
    root = soundthemes(tmp_path / "sounds")
    with caplog.at_level(logging.WARNING):
        pairs = build(root, tmp_path / "pairs.csv", "--pair-by", "translation", "--languages", "en,es")
    assert "1 of es.soundtheme's 4 entries name a missing file" in caplog.text and "nariz.wav" in caplog.text
    assert pairs[["concept", "word_a", "word_b", "lang_a", "lang_b"]].values.tolist() == [
        ["eye", "eye", "ojo", "en", "es"],
        ["hat", "hat", "sombrero", "en", "es"],
        ["egypt_camel", "camel", "camello", "en", "es"],
    ]
    assert pairs.category.tolist() == ["non-cognate", "non-cognate", "cognate"]  # as the packaged list has them
    assert (pairs.speaker_a == "ktuberling-en").all() and (pairs.speaker_b == "ktuberling-es").all()
    assert (pairs.licence == "GPL-2+").all() and (pairs.corpus == "ktuberling").all()

    within = build(root, tmp_path / "en.csv", "--pair-by", "translation", "--languages", "en", "--seed", "4")
    assert len(within) == 4 and (within.word_a != within.word_b).all()
    assert sorted(within.word_a) == sorted(within.word_b) == ["camel", "eye", "hat", "nose"]  # each once a, once b

    with pytest.raises(WpatchError, match=r"de.soundtheme names 4 of its 4 files by the objects' English names"):
        read_soundthemes(root, ["de"], "k", None)
    with pytest.raises(WpatchError, match=r"no fr.soundtheme in .*; its languages are de, en, es"):
        read_soundthemes(root, ["fr"], "k", None)
    with pytest.raises(WpatchError, match=r"give one language \(pairs within it\) or two different ones"):
        language_list("en,es,de")
    with pytest.raises(WpatchError, match=r"--languages en,en: give one language"):
        language_list("en,en")


def test_natural_pairs_run_and_the_analysis_groups_by_speaker(tmp_path, small_model_path):
    folder = digits_folder(tmp_path / "digits")
    pairs = build(folder, tmp_path / "all.csv", "--pattern", "{word}_{speaker}_{take}.wav")
    pairs = pd.concat([pairs[pairs.speaker_a == pairs.speaker_b], pairs[pairs.speaker_a != pairs.speaker_b][:2]])
    pairs.to_csv(tmp_path / "pairs.csv", index=False)  # 6 pairs of one speaker, 2 of two
    out = tmp_path / "run"
    layers = ("--model.source_layers", "[0]", "--model.target_layers", "[0, 2]")
    predict(
        predict_args(tmp_path, small_model_path, out, pairs=tmp_path / "pairs.csv", batch_size=None, options=layers)
    )
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert len(rows) == 8 * 2 * 2  # pairs x directions x layer pairs
    by_pair = pairs.set_index("pair_id")
    forward = rows[rows.direction == "a->b"]
    for column in ("speaker", "accent", "take"):
        assert (forward[f"source_{column}"] == forward.pair_id.map(by_pair[f"{column}_a"])).all()
        assert (forward[f"target_{column}"] == forward.pair_id.map(by_pair[f"{column}_b"])).all()

    groups = json.loads((out / "summary.json").read_text())["groups"]
    same = rows.source_speaker == rows.target_speaker
    assert groups["speakers=same"]["items"] == rows[same].item_id.nunique() == 12
    assert groups["speakers=different"]["items"] == rows[~same].item_id.nunique() == 4
    diagonal = rows[(rows.source_layer == "0") & (rows.target_layer == "0")]
    for name, part in (("same", diagonal[same]), ("different", diagonal[~same])):
        assert groups[f"speakers={name}"]["score"]["diagonal_mean"] == pytest.approx(part.score.astype(float).mean())
    accents = [g for g in groups if g.startswith("source_accent=")]
    assert sorted(accents) == ["source_accent=Scottish", "source_accent=Texan, rural"]
    assert sum(groups[g]["items"] for g in accents) == 16
    assert "## By speaker" in (out / "report.md").read_text()

    synthetic = tmp_path / "synthetic"
    predict(predict_args(tmp_path, small_model_path, synthetic, pairs="word_a,word_b\none,two\n", options=layers))
    synthetic_groups = json.loads((synthetic / "summary.json").read_text())["groups"]
    assert not any(group.startswith(("speakers=", "source_accent=")) for group in synthetic_groups)


@pytest.mark.skipif(not (FSDD / "recordings").is_dir(), reason=f"the Free Spoken Digit Dataset is not in {FSDD}")
def test_the_free_spoken_digit_dataset_by_its_file_names(tmp_path, small_model_path):
    pairs = build(FSDD, tmp_path / "fsdd.csv", "--pattern", "{word}_{speaker}_{take}.wav")
    below = build(FSDD / "recordings", tmp_path / "below.csv", "--pattern", "{word}_{speaker}_{take}.wav")
    assert pairs.drop(columns="corpus").equals(below.drop(columns="corpus"))  # the names are read in any subfolder
    assert (pairs.corpus == "fsdd").all() and (below.corpus == "recordings").all()
    speakers = {"jackson": "USA, neutral", "nicolas": "Belgian French", "george": "Greek", "lucas": "German"}
    assert len(pairs) == 45 * 4 * 2  # digit pairs x speakers saying the first x (same, other speaker)
    assert set(pairs.speaker_a) == set(speakers) and (pairs.accent_b == pairs.speaker_b.map(speakers)).all()
    assert (pairs.licence == "CC BY-SA 4.0").all() and set(pairs.word_a) | set(pairs.word_b) == set("0123456789")
    assert (pairs.speaker_a == pairs.speaker_b).sum() == 180
    clip = FSDD / "recordings" / "7_jackson_32.wav"
    assert soundfile.info(str(clip)).samplerate == 8000
    assert len(load_audio(clip)) == 2 * soundfile.info(str(clip)).frames
    out = tmp_path / "run"
    layers = ("--model.source_layers", "[0]", "--model.target_layers", "[0]", "--data.limit", "2")
    predict(predict_args(tmp_path, small_model_path, out, pairs=tmp_path / "fsdd.csv", options=layers))
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    first = pairs[:2]
    both_ways = [
        *zip(first.word_a, first.speaker_a, first.speaker_b),
        *zip(first.word_b, first.speaker_b, first.speaker_a),
    ]
    assert sorted(map(tuple, rows[["source_word", "source_speaker", "target_speaker"]].values)) == sorted(both_ways)


@pytest.mark.skipif(
    not KTUBERLING.is_dir(), reason="Debian's ktuberling-data is not installed (apt-get install ktuberling-data)"
)
def test_ktuberling_english_and_spanish_and_its_opus_stereo_and_8_khz_files(tmp_path, small_model_path):
    pairs = build(KTUBERLING, tmp_path / "kt.csv", "--pair-by", "translation", "--languages", "en,es")
    assert len(pairs) == 13 and {"eye", "nose", "hat"} <= set(pairs.concept)
    assert pairs.set_index("concept").loc[["eye", "nose", "hat"], "word_b"].tolist() == ["ojo", "nariz", "sombrero"]
    english = build(KTUBERLING, tmp_path / "en.csv", "--pair-by", "translation", "--languages", "en")
    assert len(english) == 71 and "camel" in set(english.word_a)
    for path, rate, channels in (("en/eye.ogg", 44100, 2), ("es/ojo.wav", 8000, 1)):
        info = soundfile.info(str(KTUBERLING / path))
        assert (info.samplerate, info.channels) == (rate, channels)
        assert len(load_audio(KTUBERLING / path)) == pytest.approx(info.frames * SAMPLE_RATE / rate, abs=1)
    opus = next((KTUBERLING / "nn").glob("*.opus"))
    assert len(load_audio(opus)) == pytest.approx(soundfile.info(str(opus)).duration * SAMPLE_RATE, abs=16)
    multilingual = save_checkpoint(random_whisper(replace(SMALL_DIMS, n_vocab=51865), seed=3), tmp_path / "ml.pt")
    out = tmp_path / "run"
    layers = ("--model.source_layers", "[0]", "--model.target_layers", "[0]", "--data.limit", "2")
    predict(predict_args(tmp_path, multilingual, out, pairs=tmp_path / "kt.csv", config="experiment_b", options=layers))
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert len(rows) == 2 and rows.concept.tolist() == pairs.concept[:2].tolist() and (rows.licence == "GPL-2+").all()
    assert (rows.source_speaker == "ktuberling-en").all() and (rows.target_speaker == "ktuberling-es").all()
