"""Screening: does the model hear each clean clip? One clean encoder run and one greedy transcript per clip.

A clip is *heard* when its greedy transcript, normalised (`wpatch.text.normalise`), equals its word; the
decoding language is forced to the clip's own language on a multilingual model (English on an English-only
one). `logp` is the teacher-forced log-probability that the transcript starts with the word (" word" or
" Word"), a graded version of the same question.
"""

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from whisper.model import Whisper

from wpatch.atomic import atomic_path
from wpatch.patching.decoding import cross_attention_cache, greedy_transcripts, word_logprobs
from wpatch.text import before, is_word, scored_word, tokenizer_for, word_at, word_tokens

SCREEN_COLUMNS = ["word", "lang", "voice", "clip", "transcript", "heard", "logp"]


@torch.no_grad()
def screen_clips(
    model: Whisper,
    mels: torch.Tensor,
    words: list[str],
    langs: list[str],
    max_tokens: int = 8,
    batch_size: int = 16,
    carriers: list[str] | None = None,
) -> pd.DataFrame:
    """Transcript, heard and logp of every clean clip: `mels` (N, n_mels, 3000) with each clip's word and language,
    and carrier sentence (`carriers`; none: words alone), where the word is heard at its place in the sentence
    with the carrier's other words kept, and scored after the carrier's words before it."""
    device = next(model.parameters()).device
    carriers = carriers or [""] * len(words)
    languages = [lang if model.is_multilingual else "en" for lang in langs]
    tokenizers = {lang: tokenizer_for(model.dims, lang) for lang in set(languages)}
    asked = [
        scored_word(tokenizers[lang], word_tokens(tokenizers[lang], word), before(carrier))
        for word, lang, carrier in zip(words, languages, carriers)
    ]
    transcripts, logps = [], []
    for start in range(0, len(words), batch_size):
        chunk = slice(start, start + batch_size)
        features = model.encoder(mels[chunk].to(device))
        cross = cross_attention_cache(model, features)
        transcripts += greedy_transcripts(model, cross, languages[chunk], max_tokens=max_tokens)
        logps += [
            scores[word] for scores, word in zip(word_logprobs(model, cross, [[w] for w in asked[chunk]]), asked[chunk])
        ]
    return pd.DataFrame(
        {
            "word": words,
            "lang": langs,
            "transcript": transcripts,
            "heard": [heard(t, w, c) for t, w, c in zip(transcripts, words, carriers)],
            "logp": logps,
        }
    )


def heard(transcript: str, word: str, carrier: str = "") -> bool:
    """The transcript has the word at the carrier's place (the whole transcript for a word alone), and the
    carrier's other words unchanged."""
    said, kept = word_at(transcript, carrier)
    return kept and is_word(said, word)


def screen_summary(screen: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Share of clips heard per voice and language, overall and per category of the pairs they appear in
    (a word in two categories counts in both)."""
    categories = pd.DataFrame(
        [
            {"category": item.pair.category, "word": side.word, "lang": side.lang, "voice": item.voice}
            for role in ("source", "target")
            for item in items.itertuples()
            for side in [getattr(item, role)]
        ],
        columns=["category", "word", "lang", "voice"],
    ).drop_duplicates()
    tagged = screen.merge(categories, on=["word", "lang", "voice"])
    overall = screen.assign(category="all")
    rows = pd.concat([overall, tagged[tagged["category"] != ""]])
    summary = rows.groupby(["voice", "lang", "category"], sort=False).agg(
        clips=("heard", "size"), heard=("heard", "sum")
    )
    summary["share_heard"] = (summary["heard"] / summary["clips"]).round(3)
    return summary.reset_index()


def clip_key(mel: torch.Tensor, lang: str, word: str = "", carrier: str = "") -> str:
    """A clip's identity for screening: its log-mel's content and the language it is decoded in, and in a carrier
    or a recording's context also the word and that text (one recording's clip holds several words)."""
    heard_as = f"\0{word}\0{carrier}".encode() if carrier else b""
    return hashlib.sha256(mel.numpy().tobytes() + lang.encode() + heard_as).hexdigest()[:24]


def cached_screen(
    load: Callable[[], Whisper],
    spec: str,
    mels: torch.Tensor,
    words: list[str],
    langs: list[str],
    cache_dir: Path,
    carriers: list[str] | None = None,
) -> pd.DataFrame:
    """`screen_clips` with every clip's result kept in `cache_dir/<model>.csv`, keyed by `clip_key`: the model is
    loaded (`load()`) and run only for clips never screened with it, so screening and later runs share the work."""
    path = Path(cache_dir) / (re.sub(r"[^\w.-]+", "_", spec) + ".csv")
    carriers = carriers or [""] * len(words)
    keys = [clip_key(mel, lang, word, carrier) for mel, lang, word, carrier in zip(mels, langs, words, carriers)]
    known = (
        pd.read_csv(path, keep_default_na=False, dtype={"transcript": str, "heard": bool})
        if path.is_file()
        else pd.DataFrame(columns=["key"])
    )
    screened = set(known["key"])
    todo = [i for i, key in enumerate(keys) if key not in screened]
    if todo:
        carried = [carriers[i] for i in todo]
        fresh = screen_clips(load(), mels[todo], [words[i] for i in todo], [langs[i] for i in todo], carriers=carried)
        fresh.insert(0, "key", [keys[i] for i in todo])
        known = pd.concat([known, fresh], ignore_index=True).drop_duplicates("key", keep="last")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as partial:
            known.to_csv(partial, index=False)
    found = known.drop_duplicates("key", keep="last").set_index("key").loc[keys]
    return pd.DataFrame(
        {
            "word": words,
            "lang": langs,
            "transcript": found["transcript"].to_numpy(),
            "heard": found["heard"].to_numpy(bool),
            "logp": found["logp"].astype(float).to_numpy(),
        }
    )
