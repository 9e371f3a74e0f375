"""Corpora: tiny corpora in each layout (Speech Commands, MSWC with opus, a TextGrid- and a CTM-aligned recording),
spoken by the offline eSpeak NG voice, turned into pairs files by `wpatch stimuli` and run end to end; the spans
cut from a long recording must hold exactly the aligned samples; bad input gives one line."""

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile

from datamodules import PairDataModule
from tests.predict_run import main as predict
from tests.predict_run import predict_args
from wpatch.cli import main
from wpatch.errors import WpatchError
from wpatch.stimuli.audio import SAMPLE_RATE, load_audio, resample
from wpatch.stimuli.corpora import read_corpus
from wpatch.stimuli.pairs_file import read_pairs
from wpatch.stimuli.spans import cut_span
from wpatch.stimuli.tts import Espeak

SPEAKERS = {"m3": "en-us+m3", "f2": "en-us+f2"}
WORDS = ["bed", "bird", "go", "no", "cat", "dog"]  # bed/bird vowel, go/no consonant, cat/dog semantic


@lru_cache(maxsize=None)
def spoken(word: str, voice: str) -> np.ndarray:
    samples, rate = Espeak().synthesize(word, voice)
    return resample(samples.astype(np.float32) / (32768.0 if samples.dtype == np.int16 else 1.0), rate)


def speech_commands(root: Path) -> Path:
    for speaker, voice in SPEAKERS.items():
        for word in WORDS:
            (root / word).mkdir(parents=True, exist_ok=True)
            soundfile.write(root / word / f"{speaker}_nohash_0.wav", spoken(word, voice), SAMPLE_RATE)
    (root / "_background_noise_").mkdir()
    soundfile.write(root / "_background_noise_" / "noise.wav", np.zeros(1600, np.float32), SAMPLE_RATE)
    return root


def long_recording(folder: Path, name: str, voice: str) -> list[tuple[str, float, float]]:
    """WORDS spoken one after another with 0.3 s of silence between, as folder/name.wav; each word's span."""
    gap = np.zeros(int(0.3 * SAMPLE_RATE), np.float32)
    parts, spans, at = [gap], [], len(gap)
    for word in WORDS:
        clip = spoken(word, voice)
        spans.append((word, at / SAMPLE_RATE, (at + len(clip)) / SAMPLE_RATE))
        parts += [clip, gap]
        at += len(clip) + len(gap)
    folder.mkdir(parents=True, exist_ok=True)
    soundfile.write(folder / f"{name}.wav", np.concatenate(parts), SAMPLE_RATE, subtype="FLOAT")
    return spans


def textgrid(path: Path, spans: list[tuple[str, float, float]], total: float) -> None:
    """A long-format TextGrid with a `phones` tier first (to be passed over) and a `words` tier with silences."""
    intervals, at = [], 0.0
    for word, start, end in spans:
        intervals += [(at, start, ""), (start, end, word.upper())]
        at = end
    intervals.append((at, total, "sil"))

    def tier(name, entries):
        lines = [
            '        class = "IntervalTier"',
            f'        name = "{name}"',
            "        xmin = 0",
            f"        xmax = {total}",
            f"        intervals: size = {len(entries)}",
        ]
        for i, (start, end, label) in enumerate(entries, 1):
            lines += [f"        intervals [{i}]:", f"            xmin = {start}", f"            xmax = {end}"]
            lines.append(f'            text = "{label}"')
        return lines

    head = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", f"xmax = {total}"]
    head += ["tiers? <exists>", "size = 2", "item []:", "    item [1]:"]
    body = tier("phones", [(0, total, "x")]) + ["    item [2]:"] + tier("words", intervals)
    path.write_text("\n".join(head + body) + "\n")


def build(corpus: Path, out: Path, *options: str) -> pd.DataFrame:
    main(["stimuli", str(corpus), "--out", str(out), *options])
    return pd.read_csv(out, dtype=str, keep_default_na=False)


def run(tmp_path: Path, pairs: Path, model: str) -> pd.DataFrame:
    out = tmp_path / "run"
    layers = ("--model.source_layers", "[0]", "--model.target_layers", "[0, 2]")
    predict(predict_args(tmp_path, model, out, pairs=pairs, batch_size=None, options=layers))
    return pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)


def test_a_speech_commands_corpus_gives_pairs_by_the_sets_rules_and_runs(tmp_path, small_model_path):
    corpus = speech_commands(tmp_path / "sc")
    pairs = build(corpus, tmp_path / "pairs" / "sc.csv", "--same-speaker", "--per-pair", "2", "--corpus", "sc")
    words = set(zip(pairs.word_a, pairs.word_b, pairs.category))
    assert words == {("bed", "bird", "vowel"), ("go", "no", "consonant"), ("cat", "dog", "semantic")}
    assert len(pairs) == 6 and (pairs.speaker_a == pairs.speaker_b).all() and set(pairs.speaker_a) == {"m3", "f2"}
    assert (pairs.licence == "CC BY 4.0").all() and (pairs.start_a.astype(float) == 0).all()
    first = pairs.iloc[0]
    assert Path(first.audio_a) == Path("../sc") / first.word_a / f"{first.speaker_a}_nohash_0.wav"
    assert float(first.end_a) == pytest.approx(len(spoken(first.word_a, SPEAKERS[first.speaker_a])) / SAMPLE_RATE)
    assert pairs[pairs.category == "vowel"].iloc[0][["phoneme_a", "phoneme_b", "position"]].tolist() == [
        "EH",
        "ER",
        "nucleus",
    ]

    rows = run(tmp_path, tmp_path / "pairs" / "sc.csv", small_model_path)
    assert len(rows) == 6 * 2 * 2  # pairs x directions x layer pairs
    assert (rows.corpus == "sc").all() and (rows.licence == "CC BY 4.0").all()
    by_pair = pairs.set_index("pair_id")
    a_to_b = rows[rows.direction == "a->b"]
    assert (a_to_b.source_speaker == a_to_b.pair_id.map(by_pair.speaker_a)).all()
    assert (rows.source_speaker == rows.target_speaker).all()

    mixed = build(corpus, tmp_path / "pairs" / "mixed.csv", "--per-pair", "2")
    assert (mixed.speaker_a != mixed.speaker_b).all() and set(mixed.speaker_a) == {"m3", "f2"}


def test_a_textgrid_aligned_recording_is_cut_at_its_spans_and_runs(tmp_path, small_model_path):
    folder = tmp_path / "aligned" / "m3"
    spans = long_recording(folder, "utt1", SPEAKERS["m3"])
    total = len(load_audio(folder / "utt1.wav")) / SAMPLE_RATE
    textgrid(folder / "utt1.TextGrid", spans, total)
    pairs = build(tmp_path / "aligned", tmp_path / "tg.csv", "--context", "word")
    assert len(pairs) == 3 and (pairs.speaker_a == "m3").all()
    where = {word: (start, end) for word, start, end in spans}
    for row in pairs.itertuples():
        assert (float(row.start_a), float(row.end_a)) == pytest.approx(where[row.word_a], abs=5e-4)

    word, start, end = spans[2]  # "go"
    cut = load_audio(cut_span(folder / "utt1.wav", start, end, tmp_path / "spans"))
    assert np.array_equal(cut, spoken(word, SPEAKERS["m3"]))
    assert np.array_equal(load_audio(cut_span(folder / "utt1.wav", start, end, tmp_path / "spans")), cut)  # cached

    rows = run(tmp_path, tmp_path / "tg.csv", small_model_path)
    assert len(rows) == 3 * 2 * 2 and (rows.corpus == "aligned").all() and (rows.source_speaker == "m3").all()


def test_a_ctm_aligned_recording_and_screening_of_its_words(tmp_path, small_model_path):
    folder = tmp_path / "ctm"
    spans = long_recording(folder, "19-198-0001", SPEAKERS["f2"])
    lines = [";; a comment"] + [f"19-198-0001 1 {s:.4f} {e - s:.4f} {w} 0.98" for w, s, e in spans]
    (folder / "align.ctm").write_text("\n".join(lines + ["19-198-0001 1 9.0 0.1 <eps>"]) + "\n")
    tokens = read_corpus(folder)
    assert tokens.word.tolist() == WORDS and (tokens.speaker == "19").all()
    pairs = build(folder, tmp_path / "ctm.csv", "--same-speaker", "--context", "word")
    assert len(pairs) == 3

    data = PairDataModule(pairs_file=str(tmp_path / "ctm.csv"), model=small_model_path, cache_dir=str(tmp_path / "c"))
    data.setup("predict")
    screen = data.screen()
    assert len(screen) == 6 and (screen.voice == "recording").all()
    assert all(Path(clip).parent.parent == tmp_path / "c" / "spans" for clip in screen["clip"])


def test_an_mswc_corpus_with_opus_clips_gives_bilingual_pairs(tmp_path):
    for lang, words in (("en", ["cat", "dog"]), ("es", ["gato", "perro"])):
        for word in words:
            (tmp_path / "mswc" / lang / "clips" / word).mkdir(parents=True)
            path = tmp_path / "mswc" / lang / "clips" / word / f"common_voice_{lang}_{len(word)}.opus"
            soundfile.write(path, spoken(word, SPEAKERS["m3"]), SAMPLE_RATE, format="OGG", subtype="OPUS")
    pairs = build(tmp_path / "mswc", tmp_path / "mswc.csv")
    assert set(zip(pairs.word_a, pairs.word_b, pairs.lang_b, pairs.category)) == {
        ("cat", "dog", "en", "semantic"),
        ("cat", "gato", "es", "non-cognate"),
        ("dog", "perro", "es", "non-cognate"),
    }
    assert read_pairs(tmp_path / "mswc.csv").audio_b.str.endswith(".opus").all()


def test_bad_corpora_and_spans_say_what_is_wrong_in_one_line(tmp_path, capsys):
    (tmp_path / "empty" / "stuff").mkdir(parents=True)
    with pytest.raises(SystemExit):
        main(["stimuli", str(tmp_path / "empty"), "--out", str(tmp_path / "x.csv")])
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "none of the layouts understood: Speech Commands" in error and "CTM" in error
    assert not (tmp_path / "x.csv").exists()

    soundfile.write(tmp_path / "rec.wav", np.zeros(16000, np.float32), SAMPLE_RATE)
    (tmp_path / "bad.opus").write_bytes(b"OggS not really opus")
    for spans, message in (
        ("rec.wav,0.5,1.5", r"line 2: audio_a .*rec.wav: the span 0.5-1.5 s lies outside the recording \(0-1.000 s\)"),
        ("rec.wav,0.5,0.5", r"line 2: audio_a .*rec.wav: the span 0.5-0.5 s is empty"),
        ("rec.wav,a,1", r"line 2: audio_a .*rec.wav: span start_a='a' end_a='1' is not two numbers"),
        ("bad.opus,0,0.5", r"line 2: audio_a .*bad.opus cannot be decoded"),
        (",0,0.5", r"line 2: start_a/end_a given without audio_a"),
    ):
        (tmp_path / "pairs.csv").write_text(f"word_a,word_b,audio_a,start_a,end_a\nbat,pat,{spans}\n")
        with pytest.raises(WpatchError, match=message):
            read_pairs(tmp_path / "pairs.csv")

    (tmp_path / "sc" / "bed").mkdir(parents=True)
    (tmp_path / "sc" / "bed" / "x_nohash_0.wav").write_bytes(b"RIFF broken")
    with pytest.raises(WpatchError, match=r"audio file .*x_nohash_0.wav cannot be decoded"):
        read_corpus(tmp_path / "sc")


def test_mswc_speakers_come_from_its_splits_table_else_from_the_file_name(tmp_path, caplog):
    clips = {"cat": ["common_voice_en_1", "common_voice_en_2"], "dog": ["common_voice_en_3", "common_voice_en_4"]}
    for word, stems in clips.items():
        (tmp_path / "mswc" / "en" / "clips" / word).mkdir(parents=True)
        for stem in stems:
            soundfile.write(tmp_path / "mswc" / "en" / "clips" / word / f"{stem}.wav", spoken(word, "en-us+m3"), 16000)
    tokens = read_corpus(tmp_path / "mswc")
    assert tokens.speaker.tolist() == [s for stems in clips.values() for s in stems]  # no table: the file names
    assert "no en_splits.csv" in caplog.text and "speaker is its file name" in caplog.text

    (tmp_path / "mswc" / "en" / "en_splits.csv").write_text(
        "SET,LINK,WORD,VALID,SPEAKER,GENDER\n"
        "TRAIN,cat/common_voice_en_1.opus,cat,True,spk_a,MALE\n"
        "TRAIN,cat/common_voice_en_2.opus,cat,True,spk_b,FEMALE\n"
        "DEV,dog/common_voice_en_3.opus,dog,True,spk_a,MALE\n"
    )
    tokens = read_corpus(tmp_path / "mswc")
    assert tokens.speaker.tolist() == ["spk_a", "spk_b", "spk_a", "common_voice_en_4"]  # en_4 is not in the table
    pairs = build(tmp_path / "mswc", tmp_path / "pairs.csv", "--same-speaker")
    assert pairs[["word_a", "word_b", "speaker_a", "speaker_b"]].values.tolist() == [["cat", "dog", "spk_a", "spk_a"]]


def test_a_recording_is_hashed_once_for_all_the_words_cut_from_it(tmp_path, monkeypatch):
    from wpatch.stimuli import spans as module

    hashed = []
    monkeypatch.setattr(module, "clip_digest", lambda path: hashed.append(path) or f"digest{len(hashed)}")
    module._digest.cache_clear()
    samples = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
    soundfile.write(tmp_path / "rec.wav", samples, SAMPLE_RATE, subtype="FLOAT")
    cuts = [cut_span(tmp_path / "rec.wav", start, start + 0.1, tmp_path / "spans") for start in (0.1, 0.3, 0.5)]
    assert len(hashed) == 1 and len({cut.parent for cut in cuts}) == 1
    assert np.array_equal(load_audio(cuts[1]), samples[4800:6400])
    soundfile.write(tmp_path / "rec.wav", samples[:8000], SAMPLE_RATE, subtype="FLOAT")  # replaced: hashed again
    assert cut_span(tmp_path / "rec.wav", 0.1, 0.2, tmp_path / "spans").parent != cuts[0].parent
    assert len(hashed) == 2


def aligned_corpus(tmp_path: Path, seconds: float = 2.0) -> Path:
    """A folder holding one silent recording, take.wav, `seconds` long, for alignment files to be put beside."""
    (tmp_path / "corpus").mkdir(exist_ok=True)
    soundfile.write(tmp_path / "corpus" / "take.wav", np.zeros(round(seconds * SAMPLE_RATE), np.float32), SAMPLE_RATE)
    return tmp_path / "corpus"


def test_a_textgrid_cut_short_anywhere_is_refused_naming_its_last_line(tmp_path):
    corpus = aligned_corpus(tmp_path)
    spans = [("bed", 0.1, 0.5), ("bird", 0.7, 1.1), ("cat", 1.3, 1.7)]
    textgrid(corpus / "take.TextGrid", spans, 2.0)
    lines = (corpus / "take.TextGrid").read_text().splitlines(keepends=True)
    assert read_corpus(corpus, context="word").word.tolist() == ["bed", "bird", "cat"]
    for kept in range(1, len(lines)):
        (corpus / "take.TextGrid").write_text("".join(lines[:kept]))
        last = len("".join(lines[:kept]).rstrip().splitlines())
        with pytest.raises(WpatchError, match=rf"TextGrid .*take.TextGrid ends at line {last} where .* should follow"):
            read_corpus(corpus, context="word")
    (corpus / "take.TextGrid").write_text("".join(lines).replace('"BIRD"', '"BIRD'))
    with pytest.raises(WpatchError, match=r"take.TextGrid line \d+: a string opened here is never closed"):
        read_corpus(corpus, context="word")


def test_textgrids_in_short_format_utf16_or_written_by_praatio_are_read_alike(tmp_path):
    from praatio import textgrid as praatio

    corpus = aligned_corpus(tmp_path)
    grid = praatio.Textgrid()
    grid.addTier(praatio.IntervalTier("phones", [(0.1, 0.2, "b")], 0, 2.0))
    grid.addTier(praatio.IntervalTier("words", [(0.1, 0.5, "bed"), (0.7, 1.1, 'say "été"')], 0, 2.0))
    expected = ["bed", 'say "été"']
    for form in ("long_textgrid", "short_textgrid"):
        grid.save(str(corpus / "take.TextGrid"), format=form, includeBlankSpaces=True)
        assert read_corpus(corpus, context="word").word.tolist() == expected, form
    (corpus / "take.TextGrid").write_text((corpus / "take.TextGrid").read_text(), encoding="utf-16")  # as Praat saves
    assert read_corpus(corpus, context="word").word.tolist() == expected


def test_alignment_spans_no_clip_can_hold_are_refused_naming_file_line_and_word(tmp_path):
    corpus = aligned_corpus(tmp_path)
    for line, message in (
        ("take 1 -0.5 0.3 bed", r"line 2: word 'bed' in .*take.wav: the span -0.5--0.2 s lies outside the recording"),
        ("take 1 1.5 1.0 bed", r"line 2: word 'bed' in .*take.wav: the span 1.5-2.5 s lies outside the recording"),
        ("take 1 0.5 600 bed", r"line 2: word 'bed' .*: the span 0.5-600.5 s lies outside the recording"),
        ("take 1 0.5 0 bed", r"line 2: word 'bed' .*: the span 0.5-0.5 s is empty; its end must be after its start"),
        ("take 1 nan 0.3 bed", r"line 2: word 'bed' .*: span its start=nan its end=nan is not two numbers"),
    ):
        (corpus / "take.ctm").write_text(f"take 1 0.1 0.3 bird\n{line}\n")
        for context in ("word", "recording"):
            with pytest.raises(WpatchError, match=rf"CTM .*take.ctm {message}"):
                read_corpus(corpus, context=context)
    (corpus / "take.ctm").unlink()
    aligned_corpus(tmp_path, seconds=700)
    textgrid(corpus / "take.TextGrid", [("bed", 0.1, 0.5), ("bird", 1.0, 601.0)], 700)
    with pytest.raises(WpatchError, match=r"TextGrid .* line \d+: word 'BIRD' .*longer than the 30 s Whisper hears"):
        read_corpus(corpus, context="word")


def test_an_alignment_file_that_is_not_utf8_is_refused_naming_the_line_and_the_way_out(tmp_path):
    corpus = aligned_corpus(tmp_path)
    (corpus / "take.ctm").write_bytes("take 1 0.1 0.3 bird\ntake 1 0.5 0.3 café\n".encode("latin-1"))
    with pytest.raises(WpatchError, match=r"CTM .*take.ctm line 2 is not UTF-8 text \(byte 0xe9\); save it as UTF-8"):
        read_corpus(corpus)
    (corpus / "take.ctm").write_text("take 1 0.1 0.3 bird\ntake 1 0.5 0.3 café\n")
    assert read_corpus(corpus, context="word").word.tolist() == ["bird", "café"]
