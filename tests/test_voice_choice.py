"""`--data.tts best`: a voice chosen per clip among offline voices, by whether the run's model hears it."""

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

import datamodules.pairs as pairs_module
from datamodules import PairDataModule
from tests.predict_run import main, predict_args
from wpatch.errors import WpatchError
from wpatch.stimuli.tts import ClipCache, make_backend
from wpatch.stimuli.voice_choice import Text, choose_voices

FAST = {"en": ("hibari", "espeak")}  # two offline voices that take milliseconds a word


def test_each_text_gets_the_first_voice_that_is_heard_and_each_voice_is_asked_once_a_round():
    texts = [Text(w) for w in ("a", "b", "c", "d")] + [Text("uno", "es")]
    heard_by = {"v1": {"a"}, "v2": {"b", "a"}, "v3": {"c", "b"}, "e1": set(), "e2": {"uno"}}
    candidates = {"en": ("v1", "v2", "v3"), "es": ("e1", "e2")}
    asked = []

    def heard_with(voice, some):
        asked.append((voice, [t.word for t in some]))
        return [t.word in heard_by[voice] for t in some]

    choice = choose_voices(texts, heard_with, candidates)
    # the reference: the first voice of the text's language whose set holds it, else that language's first voice
    expected = [next((v for v in candidates[t.lang] if t.word in heard_by[v]), candidates[t.lang][0]) for t in texts]
    assert choice.voices == expected == ["v1", "v2", "v3", "v1", "e2"]
    assert choice.heard == [True, True, True, False, True] and choice.unheard == [Text("d")]
    # a voice only hears about the texts still without one, once per round, in the candidates' order
    rounds = [
        ("v1", ["a", "b", "c", "d"]),
        ("e1", ["uno"]),
        ("v2", ["b", "c", "d"]),
        ("e2", ["uno"]),
        ("v3", ["c", "d"]),
    ]
    assert asked == rounds
    record = choice.record()
    assert record["unheard"] == ["d (en)"] and record["clips_by_voice"] == {"v1": 2, "v2": 1, "v3": 1, "e2": 1}
    with pytest.raises(WpatchError, match="best has no voices for language 'fr'"):
        choose_voices([Text("chat", "fr")], heard_with, candidates)


def best_data(tmp_path, pairs: str, model: str, folder: str = "clips", tts=("best",)) -> PairDataModule:
    (tmp_path / "pairs.csv").write_text(pairs)
    data = PairDataModule(
        pairs_file=str(tmp_path / "pairs.csv"), model=model, tts=list(tts), cache_dir=str(tmp_path / folder)
    )
    data.prepare_data()
    data.setup("predict")
    return data


def test_a_word_no_voice_makes_heard_is_spoken_by_the_first_voice_and_reported(
    tmp_path, small_model_path, monkeypatch, caplog
):
    """A random model hears nothing: every clip falls back to the first candidate and is listed as unheard."""
    monkeypatch.setattr(pairs_module, "CANDIDATES", FAST)
    with caplog.at_level(logging.WARNING, logger="datamodules.pairs"):
        data = best_data(tmp_path, "word_a,word_b\nbat,pat\ncat,dog\n", small_model_path, tts=("hibari", "best"))
    record = data.recorded().voice_choice
    assert record["clips"] == 4 and record["clips_heard"] == 0 and record["clips_by_voice"] == {"hibari": 4}
    assert sorted(record["unheard"]) == ["bat (en)", "cat (en)", "dog (en)", "pat (en)"]
    told = [r.message for r in caplog.records if "no voice makes the model" in r.message]
    assert len(told) == 1 and "hear 4 of 4 clips (bat, cat, dog, pat)" in told[0]  # once: setup does not repeat it
    columns = data.item_columns()
    assert columns["voice"].tolist() == ["hibari"] * 4 + ["best"] * 4
    assert (columns["source_voice"] == "hibari").all() and (columns["target_voice"] == "hibari").all()
    # the fallback clip is the first voice's own clip: the best items share the hibari items' clips
    assert (data.items["source_clip"][:4].to_numpy() == data.items["source_clip"][4:].to_numpy()).all()
    # both voices were screened: the cache holds each clip of hibari's and espeak's
    screened = pd.read_csv(next((tmp_path / "clips" / "screening").glob("*.csv")))
    assert len(screened) == 8


@pytest.mark.real_weights
def test_the_choice_is_the_same_every_time_and_each_row_names_the_voice_whose_clip_it_heard(tmp_path, monkeypatch):
    """tiny.en with hibari then eSpeak: hibari's "arrive" is heard as "Arise", eSpeak's as "arrive"; "cat" is
    hibari's; "accept" neither's. Two runs with their own caches choose alike, and each row's recorded voice is the
    one whose clip the model was given (byte for byte that voice's clip)."""
    monkeypatch.setattr(pairs_module, "CANDIDATES", FAST)
    pairs = "word_a,word_b\narrive,cat\naccept,cat\n"
    first, second = (best_data(tmp_path, pairs, "tiny.en", folder) for folder in ("one", "two"))
    assert first.voice_choice == second.voice_choice
    chosen = dict(zip([t.word for t in first.voice_choice.texts], first.voice_choice.voices))
    assert chosen == {"arrive": "espeak", "cat": "hibari", "accept": "hibari"}
    assert first.voice_choice.unheard == [Text("accept")]
    columns = first.item_columns().set_index("item_id")
    for item in first.items.itertuples():
        for role in ("source", "target"):
            word, voice = getattr(item, role).word, columns.loc[item.item_id, f"{role}_voice"]
            assert voice == chosen[word]
            clip = ClipCache(tmp_path / "reference", make_backend(voice)).get(word, "en")
            given = first.clip_paths[getattr(item, f"{role}_clip")]  # the clip the row's log-mel was made from
            assert Path(given).read_bytes() == Path(clip).read_bytes()  # synthesis is byte-reproducible
    screen = first.screen().set_index("word")
    assert screen.loc["arrive", "heard"] and screen.loc["arrive", "voice"] == "espeak"


def test_a_run_records_each_sides_voice_and_the_choice(tmp_path, small_model_path, monkeypatch):
    monkeypatch.setattr(pairs_module, "CANDIDATES", FAST)
    main(predict_args(tmp_path, small_model_path, None, "--data.tts", "best", max_tokens=2))
    rows = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert (rows["voice"] == "best").all() and set(rows["source_voice"]) == {"hibari"}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["voice_choice"]["clips"] == 2 and summary["voice_choice"]["unheard"] == ["bat (en)", "pat (en)"]
