"""Words in carrier sentences: the word read at its place in the transcript, scored after the carrier's words
before it, its frames from Whisper's alignment (checked on real tiny.en against `whisper.transcribe`'s own word
timestamps), and a run with a `carrier` column end to end."""

import json
import re

import pandas as pd
import pytest
import torch
import whisper

from datamodules import PairDataModule
from tests.predict_run import main, predict_args
from wpatch.errors import WpatchError
from wpatch.models.loading import load_model
from wpatch.stimuli.audio import load_audio, log_mel
from wpatch.stimuli.carriers import word_frames
from wpatch.stimuli.pairs_file import read_pairs
from wpatch.stimuli.screening import heard
from wpatch.stimuli.tts import ClipCache, make_backend
from wpatch.text import scored_word, scoring_prefix, tokenizer_for, word_at, word_tokens

PAIRS = "word_a,word_b,category,carrier\nbat,pat,consonant,say {} again\nhot,cold,semantic,say {} again\n"


def test_the_word_is_read_at_the_carriers_place_and_only_with_the_carrier_kept():
    assert word_at(" Say bat again.", "say {} again") == ("bat", True)
    assert word_at("Say, pat! Again", "say {} again") == ("pat", True)
    assert word_at("Stay bat again.", "say {} again") == ("bat", False)  # position kept, carrier not
    assert word_at("Say bat", "say {} again") == ("bat", False)
    assert word_at("Say", "say {} again") == ("", False)
    assert word_at("Hot dog now.", "{} now") == ("hot dog", True)
    assert word_at(" Bat.", "") == ("bat", True)  # a word alone: the whole transcript, as before
    assert heard("Say bat again.", "bat", "say {} again") and not heard("Stay bat again.", "bat", "say {} again")


def test_the_word_is_scored_after_the_carriers_words_before_it(small_model_path):
    tokenizer = tokenizer_for(load_model(small_model_path).dims, "en")
    forms = word_tokens(tokenizer, "bat")
    alone, carried = scored_word(tokenizer, forms), scored_word(tokenizer, forms, "Say")
    assert alone.prefix == scoring_prefix(tokenizer) and alone.forms == carried.forms
    assert carried.prefix == scoring_prefix(tokenizer) + tuple(tokenizer.encode(" Say"))


@pytest.mark.parametrize("carrier", ["say again", "say {} {}", "say {word}"])
def test_a_carrier_without_one_placeholder_is_refused_naming_the_line(tmp_path, carrier):
    (tmp_path / "pairs.csv").write_text(f"word_a,word_b,carrier\nbat,pat,say {{}}\nhot,cold,{carrier}\n")
    with pytest.raises(WpatchError, match=re.escape(f"pairs.csv line 3: carrier {carrier!r} needs exactly one {{}}")):
        read_pairs(tmp_path / "pairs.csv")


def test_a_run_with_a_carrier_patches_the_words_frames_and_reads_the_word_at_its_place(tmp_path, small_model_path):
    out = tmp_path / "out"
    main(
        predict_args(
            tmp_path,
            small_model_path,
            out,
            "--model.windows",
            "[all, word]",
            "--model.source_layers",
            "[1]",
            "--data.tts",
            "espeak",
            pairs=PAIRS,
        )
    )
    rows = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert (rows.carrier == "say {} again").all() and rows.carrier_kept.dtype == bool
    assert not (rows.override & ~rows.carrier_kept).any()
    data = PairDataModule(
        pairs_file=str(tmp_path / "pairs.csv"), model=small_model_path, tts="espeak", cache_dir=str(tmp_path / "clips")
    )
    data.setup("predict")
    word = rows[(rows.window == "word") & (rows.direction == "a->b") & (rows.pair_id == "p00000")]
    spans = [
        tuple(data.spans[data.items.source_clip[0]].tolist()),
        tuple(data.spans[data.items.target_clip[0]].tolist()),
    ]
    assert (word.window_start == min(s[0] for s in spans)).all() and (word.window_end == max(s[1] for s in spans)).all()
    # the clean source clip's logit difference, computed independently with the plain model: each word after
    # the forced start and " Say", summed over its two surface forms
    model = load_model(small_model_path)
    tokenizer = tokenizer_for(model.dims, "en")
    features = model.encoder(data.mels[int(data.items.source_clip[0])][None])

    def logp(word):
        total = []
        for form in word_tokens(tokenizer, word):
            tokens = list(scoring_prefix(tokenizer)) + tokenizer.encode(" Say") + form
            logits = model.logits(torch.tensor([tokens]), features)[0].log_softmax(-1)
            total.append(sum(logits[len(tokens) - len(form) - 1 + i, t] for i, t in enumerate(form)))
        return torch.logsumexp(torch.stack(total), 0).item()

    assert word.ld_source_clean.iloc[0] == pytest.approx(logp("bat") - logp("pat"), abs=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["word_frames"]["clips"] == 4 and "find_alignment" in summary["word_frames"]["method"]
    # report.md says so too, and how many rows kept the carrier's other words
    kept = f"kept the context's other words in {rows.carrier_kept.sum()} of {len(rows)} rows"
    found = summary["word_frames"]
    assert kept in (out / "report.md").read_text()
    assert f"(`word` window): {found['method']}, {small_model_path}, 4 clips" in (out / "report.md").read_text()


@pytest.mark.real_weights
def test_word_frames_match_whispers_own_word_timestamps_on_tiny_en(clip_dir):
    """The forced alignment of the sentence's text and `whisper.transcribe(word_timestamps=True)` (free decoding)
    must put the word on the same 20 ms frames, to one frame, wherever the transcript has the word."""
    model, cache = load_model("tiny.en"), ClipCache(clip_dir, make_backend("hibari"))
    tokenizer = tokenizer_for(model.dims, "en")
    compared = 0
    for word in ("ship", "cold", "bat", "sheep"):
        audio = load_audio(cache.get(f"say {word} again", "en"))
        first, last = word_frames(model, tokenizer, log_mel(audio, 80), len(audio), "say {} again", word)
        result = whisper.transcribe(model, audio, word_timestamps=True, language="en", fp16=False)
        timed = [w for s in result["segments"] for w in s["words"] if w["word"].strip(" .,") == word]
        if timed:
            compared += 1
            assert abs(first - round(timed[0]["start"] / 0.02)) <= 1 and abs(last - round(timed[0]["end"] / 0.02)) <= 1
    assert compared >= 2
