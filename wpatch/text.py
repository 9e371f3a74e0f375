"""Words: transcript normalisation, and everything about how a word is scored (its surface forms, their token ids,
the forced transcript start they are scored after: `ScoredWord`), and a word's place in a carrier sentence.

Normalisation (used for `override` and `retained`): Unicode NFKC, lower case, every punctuation or
symbol character removed, runs of white space folded to one space, ends stripped. Accents are kept
("teléfono" stays as it is). So " Bat." -> "bat" and "Hot-dog!" -> "hotdog".
"""

import unicodedata
from typing import NamedTuple

from whisper.model import ModelDimensions
from whisper.tokenizer import Tokenizer, get_tokenizer


def normalise(text: str) -> str:
    """Lower-cased text without punctuation or symbols, single-spaced (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith(("P", "S")))
    return " ".join(text.split())


def is_word(text: str, word: str) -> bool:
    """The normalised transcript is the normalised word (never when the word normalises to "")."""
    word = normalise(word)
    return bool(word) and normalise(text) == word


def has_word(text: str, word: str) -> bool:
    """The normalised word appears as a whole word in the normalised transcript (never when it normalises to "")."""
    word = normalise(word)
    return bool(word) and f" {word} " in f" {normalise(text)} "


def surface_forms(word: str) -> list[str]:
    """How Whisper may write `word` at the start of a transcript: " word" and " Word" (deduplicated)."""
    word = word.strip()
    return list(dict.fromkeys([" " + word, " " + word[:1].upper() + word[1:]]))


def tokenizer_for(dims: ModelDimensions, language: str | None = "en", task: str = "transcribe") -> Tokenizer:
    """openai-whisper's tokenizer for a model of these dimensions."""
    multilingual = dims.n_vocab >= 51865
    num_languages = dims.n_vocab - 51765 - int(multilingual)
    return get_tokenizer(
        multilingual, num_languages=num_languages, language=language if multilingual else "en", task=task
    )


def word_tokens(tokenizer: Tokenizer, word: str) -> list[list[int]]:
    """Token ids of each surface form of `word`."""
    return [tokenizer.encode(form) for form in surface_forms(word)]


def scoring_prefix(tokenizer: Tokenizer) -> tuple[int, ...]:
    """The forced start of a transcript: start-of-transcript, language, task, no-timestamps."""
    return tuple(tokenizer.sot_sequence_including_notimestamps)


class ScoredWord(NamedTuple):
    """A word as the decoder scores it (`wpatch.patching.decoding.word_logprobs`): log P(transcript starts with one of
    `forms` | `prefix`), summed over the forms."""

    prefix: tuple[int, ...]  # the forced transcript start (`scoring_prefix`) and any words before this one
    forms: tuple[tuple[int, ...], ...]  # token ids of each surface form (`word_tokens`)


def scored_word(tokenizer: Tokenizer, forms: list[list[int]], context: str = "") -> ScoredWord:
    """The word whose surface forms have token ids `forms`, scored after `tokenizer`'s forced transcript start and
    the transcript up to the word (`context`, e.g. "Say" in a carrier sentence; none for a word alone)."""
    prefix = scoring_prefix(tokenizer) + (tuple(tokenizer.encode(" " + context)) if context else ())
    return ScoredWord(prefix, tuple(map(tuple, forms)))


def before(carrier: str) -> str:
    """The carrier's text before the word, as Whisper writes a sentence start (first letter upper case)."""
    text = carrier.split("{}")[0].strip() if carrier else ""
    return text[:1].upper() + text[1:]


def word_at(transcript: str, carrier: str) -> tuple[str, bool]:
    """(the normalised transcript's words where the carrier's `{}` is, whether the carrier's other words are all
    there, unchanged); without a carrier: (the whole normalised transcript, True)."""
    text = normalise(transcript)
    if not carrier:
        return text, True
    head, tail = (normalise(part) for part in carrier.split("{}"))
    kept = text.startswith(f"{head} " if head else "") and text.endswith(f" {tail}" if tail else "")
    if kept:
        return text[len(head) : len(text) - len(tail)].strip(), True
    words = text.split()
    index = len(head.split())
    return (words[index] if index < len(words) else ""), False
