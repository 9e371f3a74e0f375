"""The measures and the pieces that decide them, with values worked out by hand: normalisation, the transcript
measures, score, effect, p_source_language, the control donor, the word's frames, and the result row."""

import math

import numpy as np
import pandas as pd
import pytest

from datamodules import PairDataModule
from datamodules.pairs import control_clips
from tests.test_reference import pairs_csv
from wpatch.patching.measures import effect, override, p_source_language, retained, score, transfer
from wpatch.rows import ResultRow
from wpatch.sides import Side
from wpatch.stimuli.audio import speech_span
from wpatch.text import has_word, is_word, normalise


@pytest.mark.parametrize(
    "text, expected",
    [
        (" Bat.", "bat"),
        ("Hot-dog!", "hotdog"),
        ("teléfono", "teléfono"),
        ("ＢＡＴ", "bat"),  # NFKC folds full width
        ("  big \n  pig ", "big pig"),
        ("...", ""),
        ("$5 + 3", "5 3"),
        ("¿Qué?", "qué"),
    ],
)
def test_normalise(text, expected):
    assert normalise(text) == expected


def test_transcript_measures():
    assert override(" Cat.", "cat") and not override("Cat cat", "cat") and not override("cats", "cat")
    assert retained("Pat!", "pat") and not retained("bat", "pat")
    assert transfer("I saw a cat.", "cat") and transfer("Cat", "cat") and not transfer("Cathedral", "cat")
    assert not is_word("...", "!!!") and not has_word("!!!", "?")  # a word that normalises to nothing never matches


def test_score_is_the_source_share_of_the_two_probabilities():
    assert score(0.0, 0.0) == 0.5
    assert score(math.log(3), 0.0) == pytest.approx(0.75) and score(0.0, math.log(3)) == pytest.approx(0.25)
    assert score(0.0, -1000.0) == 1.0 and score(-1000.0, 0.0) == pytest.approx(0.0, abs=1e-300)  # no overflow


def test_effect_is_zero_on_the_target_run_and_one_on_the_source_run():
    # clean runs: LD 3 on the source clip, -1 on the target clip
    assert effect(-1.0, -4.0, 3.0, -1.0, 1.0) == (1.0, True)
    assert effect(-5.0, -4.0, 3.0, -1.0, 1.0) == (0.0, True)
    assert effect(-2.0, -3.0, 3.0, -1.0, 1.0) == (0.5, True)
    value, valid = effect(-2.0, -3.0, 3.0, 2.5, 1.0)  # the clean runs separate the words by 0.5 < 1 nat
    assert math.isnan(value) and not valid


def test_p_source_language():
    probs = {"en": 0.3, "es": 0.1, "fr": 0.6}
    assert p_source_language(probs, "en", "es") == pytest.approx(0.75)
    assert p_source_language(probs, "es", "en") == pytest.approx(0.25)
    assert p_source_language({"en": 0.2}, "en", "es") == 1.0
    for args in ((probs, "en", "en"), (None, "en", "es"), ({}, "en", "es"), ({"fr": 1.0}, "en", "es")):
        assert math.isnan(p_source_language(*args))


def test_a_row_without_every_measure_is_an_error():
    with pytest.raises(TypeError, match="score"):
        ResultRow(
            item_id=0,
            site="block_out",
            source_layer=0,
            target_layer=0,
            window="all",
            window_start=0,
            window_end=1500,
            alpha=1.0,
            patch_direction="denoising",
            donor="source",
            donor_word="a",
            transcript="a",
            override=True,
            retained=False,
            transfer=True,
            logp_source=-1.0,
            logp_target=-2.0,
            p_source_language=float("nan"),
            source_recognised=True,
            ld_source_clean=1.0,
            ld_target_clean=-1.0,
            effect=1.0,
            effect_valid=True,
        )


def items_of(pairs: list[tuple[str, str]], voice="v", lang="en", first_clip=0) -> pd.DataFrame:
    """Items of these pairs, both directions; each (word, language, voice) has its own clip."""
    rows = [(a, b) for a, b in pairs] + [(b, a) for a, b in pairs]
    clip = {word: first_clip + i for i, word in enumerate(dict.fromkeys(w for pair in pairs for w in pair))}
    return pd.DataFrame(
        {
            "item_id": range(len(rows)),
            "source": [Side(a, lang) for a, _ in rows],
            "target": [Side(b, lang) for _, b in rows],
            "voice": voice,
            "source_clip": [clip[a] for a, _ in rows],
        }
    )


def test_control_clips_are_unrelated_words_of_the_same_language_and_voice():
    items = pd.concat(
        [
            items_of([("bat", "pat"), ("hot", "cold"), ("ship", "sheep")]),
            items_of([("perro", "gato"), ("casa", "cosa")], lang="es", first_clip=10),
            items_of([("bat", "pat"), ("hot", "cold")], voice="w", first_clip=20),
        ],
        ignore_index=True,
    )
    items["item_id"] = range(len(items))
    clips, sides = control_clips(items)
    for item, clip, side in zip(items.itertuples(), clips, sides):
        assert side.word not in (item.source.word, item.target.word)
        donor = items[items.source_clip == clip].iloc[0]
        assert (donor.source, donor.voice) == (side, item.voice) and side.lang == item.source.lang
    assert len({side.word for side in sides[:6]}) > 1  # drawn, not always the same word
    assert control_clips(items) == (clips, sides)  # with a fixed seed per item


def test_control_clip_falls_back_to_the_source_when_nothing_is_unrelated(tmp_path, small_model_path):
    """The DataModule counts the items whose control is their own source clip (the module says so when the run
    patches from control donors: tests/test_bad_inputs.py)."""
    items = items_of([("bat", "pat")])
    assert control_clips(items) == (list(items.source_clip), list(items.source))
    pairs = pairs_csv(tmp_path / "stimuli", [("bat", "pat", "en", "en", "")])
    dm = PairDataModule(pairs_file=pairs, model=small_model_path, tts="espeak", cache_dir=str(tmp_path / "clips"))
    dm.setup()
    assert dm.control_fallbacks == 2
    assert (dm.items.control_clip == dm.items.source_clip).all()


def test_speech_span_is_the_loud_frames_padded():
    audio = np.zeros(16000, dtype=np.float32)
    audio[8000:11200] = 0.5 * np.sin(np.arange(3200) / 5)  # 0.5 s to 0.7 s: encoder frames 25..34
    assert speech_span(audio) == (24, 36)
    assert speech_span(audio, pad=0) == (25, 35)
    audio[:320] = 0.5  # loud from the first frame: the start cannot go below 0
    assert speech_span(audio)[0] == 0
    quiet = audio.copy()
    quiet[8000:11200] *= 0.01  # 40 dB below the first frame: no longer part of the word
    assert speech_span(quiet) == (0, 2)
    assert speech_span(np.ones(16000 * 31, dtype=np.float32)) == (0, 1500)  # clamped to the encoder's 1500 frames
