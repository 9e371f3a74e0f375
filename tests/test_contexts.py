"""A recorded word heard in its recording's context: tiny aligned recordings (the offline eSpeak NG voice, hand-written
TextGrids) where the clip must be the recording itself (or a segment of at most 30 s cut at word boundaries), the
word window the span's frames, and the word scored after the recording's words before it, checked against the
plain model; then end to end through `wpatch stimuli` and `wpatch predict`."""

import json

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
import whisper

from datamodules import PairDataModule
from tests.predict_run import main as predict
from tests.predict_run import predict_args
from tests.test_corpora import SPEAKERS, build, spoken, textgrid
from wpatch.models.loading import load_model
from wpatch.stimuli.audio import SAMPLE_RATE, load_audio
from wpatch.stimuli.contexts import MAX_SECONDS, recorded_frames, segment
from wpatch.stimuli.corpora import read_corpus
from wpatch.text import before, normalise, scoring_prefix, tokenizer_for, word_tokens

FRAME = SAMPLE_RATE // 50  # samples per encoder frame (20 ms)
ORDERS = {"m3": ["bed", "go", "cat", "bird", "no", "dog"], "f2": ["dog", "bird", "no", "bed", "cat", "go"]}


def speech(clip: np.ndarray) -> tuple[int, int]:
    """Samples [first, last) of a clip's speech: its 20 ms frames within 40 dB of its loudest (where an aligner
    puts a word's boundaries, rather than at the synthesiser's silence around it)."""
    n = len(clip) // FRAME
    rms = np.sqrt((clip[: n * FRAME].reshape(n, FRAME).astype(np.float64) ** 2).mean(1) + 1e-20)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > -40)
    return int(loud[0]) * FRAME, (int(loud[-1]) + 1) * FRAME


def recording(folder, name: str, voice: str, words: list[str], gap=0.3, pause=0.0, trim=False):
    """`words` spoken one after another, `gap` s of silence around each (and `pause` s more after the third), as
    folder/name.wav with its TextGrid; each word's span in samples: the synthesised clip's, or with `trim` its
    speech's."""
    silence = np.zeros(round(gap * SAMPLE_RATE), np.float32)
    parts, spans, at = [silence], [], len(silence)
    for i, word in enumerate(words):
        clip = spoken(word, voice)
        first, last = speech(clip) if trim else (0, len(clip))
        spans.append((word, at + first, at + last))
        extra = np.zeros(round(pause * SAMPLE_RATE) if i == 2 else 0, np.float32)
        parts += [clip, silence, extra]
        at += len(clip) + len(silence) + len(extra)
    folder.mkdir(parents=True, exist_ok=True)
    audio = np.concatenate(parts)
    soundfile.write(folder / f"{name}.wav", audio, SAMPLE_RATE, subtype="FLOAT")
    textgrid(
        folder / f"{name}.TextGrid", [(w, s / SAMPLE_RATE, e / SAMPLE_RATE) for w, s, e in spans], at / SAMPLE_RATE
    )
    return spans


@pytest.fixture
def aligned(tmp_path):
    """Two recordings of the six words in different orders, by two voices; their spans (samples)."""
    return {
        speaker: recording(tmp_path / "aligned" / speaker, f"utt_{speaker}", SPEAKERS[speaker], words)
        for speaker, words in ORDERS.items()
    }


def test_a_segment_around_a_word_of_a_long_recording_is_cut_at_word_boundaries_within_30_s():
    spans = [(i * 4.0 + 1.0, i * 4.0 + 1.5) for i in range(20)]  # 20 words, 4 s apart, 81 s in all
    start, end, lo, hi = segment(spans, 10, 81.0)
    assert end - start <= MAX_SECONDS and lo <= 10 < hi
    assert spans[hi - 1][1] - spans[lo][0] <= MAX_SECONDS < spans[hi][1] - spans[lo - 1][0]  # as many words as fit
    assert start == spans[lo - 1][1] or spans[lo - 1][1] < start < spans[lo][0]  # in the silence before its first
    assert end == spans[hi][0] or spans[hi - 1][1] < end < spans[hi][0]
    # the first word: the words after it; 1 s of silence before and 3.5 s after do not both fit, so 0.75 s each
    assert segment(spans, 0, 81.0) == (0.25, 30.25, 0, 8)
    assert segment(spans[:3], 1, 12.0) == (0.0, 12.0, 0, 3)  # fits: the whole recording
    with pytest.raises(ValueError, match="longer than 30 s"):
        segment([(0.0, 31.0), (32.0, 33.0)], 0, 40.0)


def test_recorded_frames_are_the_frames_the_span_touches():
    assert recorded_frames(1.02, 1.5, 0.0, 1500) == (51, 75)  # on the 20 ms grid: no frame gained or lost
    assert recorded_frames(1.03, 1.51, 0.0, 1500) == (51, 76)  # floor of the start, ceiling of the end
    assert recorded_frames(11.03, 11.51, 10.0, 1500) == (51, 76)  # relative to the clip's start
    assert recorded_frames(29.99, 30.0, 0.0, 1500) == (1499, 1500)


def test_an_aligned_word_is_heard_in_its_recording_by_default_and_cut_to_its_span_on_request(tmp_path, aligned):
    pairs = build(tmp_path / "aligned", tmp_path / "pairs.csv")
    assert len(pairs) == 3 and (pairs.audio_a != pairs.audio_b).all()  # never both words from one recording
    recordings = {speaker: tmp_path / "aligned" / speaker / f"utt_{speaker}.wav" for speaker in ORDERS}
    for row in pairs.itertuples():
        for side in "ab":
            speaker, word = getattr(row, f"speaker_{side}"), getattr(row, f"word_{side}")
            words = ORDERS[speaker]
            assert getattr(row, f"context_{side}") == " ".join("{}" if w == word else w for w in words)
            assert float(getattr(row, f"context_start_{side}")) == 0.0
            seconds = len(load_audio(recordings[speaker])) / SAMPLE_RATE
            assert float(getattr(row, f"context_end_{side}")) == pytest.approx(seconds, abs=1e-6)
    alone = build(tmp_path / "aligned", tmp_path / "alone.csv", "--context", "word")
    assert "context_a" not in alone.columns and len(alone) == 3
    assert (read_corpus(tmp_path / "aligned", context="word").context == "").all()


def test_the_clip_is_the_recording_and_the_window_the_spans_frames(tmp_path, aligned, small_model_path):
    build(tmp_path / "aligned", tmp_path / "mixed.csv")
    data = PairDataModule(pairs_file=str(tmp_path / "mixed.csv"), model=small_model_path, cache_dir=str(tmp_path / "c"))
    data.setup("predict")
    assert data.word_frames["recorded"]["clips"] == 6 and "floor" in data.word_frames["recorded"]["method"]
    for i, key in enumerate(data.clip_keys):
        speaker = "m3" if "utt_m3" in key.audio else "f2"
        assert np.array_equal(load_audio(data.clip_paths[i]), load_audio(key.audio))  # the recording, every sample
        word, start, end = next(span for span in aligned[speaker] if span[0] == key.word)
        # the span's samples on the 320-sample frame grid, in integers: the first frame it touches, one past its last
        assert tuple(data.spans[i].tolist()) == (start // FRAME, -(-end // FRAME))
        assert key.carrier == " ".join("{}" if w == word else w for w in ORDERS[speaker])
    # screening: one recording's clip holds several words, each screened (and cached) for its own word
    screen = data.screen()
    assert screen.groupby("clip").logp.nunique().tolist() == screen.groupby("clip").size().tolist() == [3, 3]


def logp(model, tokenizer, features, context: str, word: str) -> float:
    """log P(word | the forced start and the context's words before `{}`) on one clean encoder output, summed over
    the word's two surface forms, read with the plain model."""
    total = []
    for form in word_tokens(tokenizer, word):
        tokens = list(scoring_prefix(tokenizer)) + (tokenizer.encode(" " + before(context)) if before(context) else [])
        tokens += form
        logits = model.logits(torch.tensor([tokens]), features)[0].log_softmax(-1)
        total.append(sum(logits[len(tokens) - len(form) - 1 + i, t] for i, t in enumerate(form)))
    return torch.logsumexp(torch.stack(total), 0).item()


def test_a_run_reads_each_clip_in_its_own_recordings_words(tmp_path, aligned, small_model_path):
    """End to end: `wpatch stimuli` then `wpatch predict`; each clean run's logit difference must equal the plain
    model's on the same clip with that clip's own words before the word; the word window spans both words'
    frames; a row reads its transcript in its recipient clip's words."""
    pairs = build(tmp_path / "aligned", tmp_path / "pairs.csv")
    out = tmp_path / "run"
    layers = ("--model.source_layers", "[1]", "--model.target_layers", "[1]")
    windows = ("--model.windows", "[word]", "--model.directions", "[denoising, noising]")
    predict(
        predict_args(
            tmp_path,
            small_model_path,
            out,
            pairs=tmp_path / "pairs.csv",
            batch_size=None,
            max_tokens=12,
            options=(*layers, *windows),
        )
    )
    rows = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert len(rows) == 3 * 2 * 2  # pairs x pair directions x patch directions
    data = PairDataModule(pairs_file=str(tmp_path / "pairs.csv"), model=small_model_path, cache_dir=str(tmp_path / "c"))
    data.setup("predict")
    model = load_model(small_model_path)
    tokenizer = tokenizer_for(model.dims, "en")
    by_pair = pairs.set_index("pair_id")
    for item in data.items.itertuples():
        mine = rows[rows.item_id == item.item_id]
        src, tgt = ("a", "b") if item.direction == "a->b" else ("b", "a")
        contexts = {
            side: by_pair.loc[item.pair.pair_id, f"context_{x}"] for side, x in (("source", src), ("target", tgt))
        }
        for side, column in (("source", "ld_source_clean"), ("target", "ld_target_clean")):
            features = model.encoder(data.mels[int(getattr(item, f"{side}_clip"))][None])
            gap = logp(model, tokenizer, features, contexts[side], item.source.word)
            gap -= logp(model, tokenizer, features, contexts[side], item.target.word)
            assert mine[column].iloc[0] == pytest.approx(gap, abs=1e-4)
        assert (mine[mine.patch_direction == "denoising"].carrier == contexts["target"]).all()
        assert (mine[mine.patch_direction == "noising"].carrier == contexts["source"]).all()
        spans = [data.spans[int(getattr(item, f"{side}_clip"))].tolist() for side in ("source", "target")]
        assert (mine.window_start == min(s[0] for s in spans)).all()
        assert (mine.window_end == max(s[1] for s in spans)).all()
    assert not (rows.override & ~rows.carrier_kept).any()
    # report.md says how many rows kept their context's words and how the words' frames were found
    report, recorded = (out / "report.md").read_text(), json.loads((out / "summary.json").read_text())["word_frames"]
    kept = f"kept the context's other words in {rows.carrier_kept.sum()} of {len(rows)} rows"
    assert kept in report and f"frames (`word` window): {recorded['recorded']['method']}, 6 clips" in report


def test_a_long_recordings_word_is_heard_in_a_segment_of_at_most_30_s(tmp_path, small_model_path):
    spans = recording(tmp_path / "long" / "m3", "utt_long", SPEAKERS["m3"], ORDERS["m3"], pause=30.0)
    other = recording(tmp_path / "long" / "f2", "utt_f2", SPEAKERS["f2"], ORDERS["f2"])
    pairs = build(tmp_path / "long", tmp_path / "pairs.csv")
    data = PairDataModule(pairs_file=str(tmp_path / "pairs.csv"), model=small_model_path, cache_dir=str(tmp_path / "c"))
    data.setup("predict")
    whole = load_audio(tmp_path / "long" / "m3" / "utt_long.wav")
    assert len(whole) / SAMPLE_RATE > MAX_SECONDS
    checked = 0
    for i, key in enumerate(data.clip_keys):
        if "utt_long" not in key.audio:
            continue
        start, end = float(key.context_start), float(key.context_end)
        assert end - start <= MAX_SECONDS
        index = [w for w, *_ in spans].index(key.word)
        before_pause = index <= 2  # the 30 s pause after the third word splits the recording in two
        words = ORDERS["m3"][:3] if before_pause else ORDERS["m3"][3:]
        assert key.carrier == " ".join("{}" if w == key.word else w for w in words)
        # whole words only: from the recording's start; after the pause, 30 s ending at the recording's end, its
        # start in the silence before the segment's first word (the pause trimmed to fit)
        if before_pause:
            assert start == 0.0 and spans[2][2] / SAMPLE_RATE < end < spans[3][1] / SAMPLE_RATE
        else:
            assert spans[2][2] / SAMPLE_RATE < start < spans[3][1] / SAMPLE_RATE
            assert end == pytest.approx(len(whole) / SAMPLE_RATE, abs=1e-6)
            assert end - start == pytest.approx(MAX_SECONDS, abs=1e-5)
        assert np.array_equal(
            load_audio(data.clip_paths[i]), whole[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]
        )
        word_start = spans[index][1] - round(start * SAMPLE_RATE)
        word_end = spans[index][2] - round(start * SAMPLE_RATE)
        assert tuple(data.spans[i].tolist()) == (word_start // FRAME, -(-word_end // FRAME))
        checked += 1
    assert checked >= 2 and len(pairs) == 3 and other


# Whisper's timestamps come from cross-attention and dynamic time warping over 20 ms tokens, coarse by a few hundred
# ms; the bound is the largest start difference seen on any CPU (16 frames) with a 50 % margin: 24 frames, 0.48 s
START_BOUND = 24


@pytest.mark.real_weights
def test_the_alignments_word_frames_against_whispers_own_word_timestamps_on_tiny_en(tmp_path):
    """The frames an in-context run patches (the alignment file's, here each word's speech) and tiny.en's word
    timestamps (`whisper.transcribe(word_timestamps=True)`) on the same recording: every word Whisper writes must
    overlap its aligned frames, its start within START_BOUND frames. Measured (docs/carriers.md): at most 11 frames
    with AVX-512 kernels, 16 with AVX2 ones (another transcript, another attention pattern)."""
    model = load_model("tiny.en")
    compared = []
    for speaker, words in ORDERS.items():
        recording(tmp_path / speaker, "utt", SPEAKERS[speaker], words, trim=True)
        tokens = read_corpus(tmp_path / speaker)
        result = whisper.transcribe(model, load_audio(tmp_path / speaker / "utt.wav"), word_timestamps=True, fp16=False)
        timed = {normalise(w["word"]): w for s in result["segments"] for w in s["words"]}
        for token in tokens.itertuples():
            first, last = recorded_frames(token.start, token.end, 0.0, 1500)
            if token.word in timed:
                start, end = round(timed[token.word]["start"] / 0.02), round(timed[token.word]["end"] / 0.02)
                seen = (token.word, first, last, start, end)
                assert start < last and end > first and abs(start - first) <= START_BOUND, seen
                compared.append(token.word)
    assert len(compared) >= 6
