"""Words: transcript normalisation, a word's written forms, and everything about how a word is scored (its
surface forms, their token ids, the forced transcript start they are scored after: `ScoredWord`), and a word's
place in a carrier sentence.

Normalisation (used for `override` and `retained`): Unicode NFKC, lower case, every punctuation or
symbol character removed, runs of white space folded to one space, ends stripped. Accents are kept
("teléfono" stays as it is). So " Bat." -> "bat" and "Hot-dog!" -> "hotdog".

Written forms (`written_forms`): an English number has two, spelled and numeral ("seven" / "7", "twenty-one" /
"21"), as Whisper writes either; every other word has one, itself. A transcript is the word when it is any of its
forms; the log-probability measures score the forms `--model.word_form` names (`WordForm`, `scored_word`).
"""

import unicodedata
from typing import Literal, NamedTuple

from whisper.model import ModelDimensions
from whisper.normalizers.english import EnglishNumberNormalizer
from whisper.tokenizer import Tokenizer, get_tokenizer

WordForm = Literal["sum", "best", "spelled", "numeral"]


def normalise(text: str) -> str:
    """Lower-cased text without punctuation or symbols, single-spaced (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith(("P", "S")))
    return " ".join(text.split())


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen \
seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))


def spelled_number(n: int) -> str:
    """The English words for a whole number n >= 0, as Whisper writes them spelled out: "seven", "twenty-one",
    "one hundred five", "two thousand twenty" (each is read back to n by Whisper's `EnglishNumberNormalizer`)."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else "")
    scale, name = next((s, name) for s, name in _SCALES if n >= s)
    rest = n % scale
    return f"{spelled_number(n // scale)} {name}" + (f" {spelled_number(rest)}" if rest else "")


def written_forms(word: str, language: str | None = "en") -> dict[str, str]:
    """A word's written forms by kind: an English whole number both ways, {"spelled": "seven", "numeral": "7"},
    whichever way it is given; any other word (and any word of another language) {"word": word}.

    A spelled word is a number when Whisper's own `EnglishNumberNormalizer` reads it as one and `spelled_number`
    spells that number back as the word ("seven", "twenty-one", "twenty one"; not "oh", which the normaliser also
    reads as 0); a lone "one", which the normaliser leaves as text, is 1. A numeral is digits without a leading 0."""
    text = " ".join(word.strip().lower().split())
    if language in ("en", None):
        if text.isascii() and text.isdigit() and (text == "0" or text[0] != "0"):
            return {"spelled": spelled_number(int(text)), "numeral": text}
        numeral = "1" if text == "one" else EnglishNumberNormalizer()(text.replace("-", " "))
        if numeral.isascii() and numeral.isdigit() and numeral_free(spelled_number(int(numeral))) == numeral_free(text):
            return {"spelled": word.strip(), "numeral": numeral}
    return {"word": word.strip()}


def numeral_free(text: str) -> str:
    """`text` with hyphens as spaces (how `written_forms` compares a spelling with `spelled_number`'s)."""
    return " ".join(text.replace("-", " ").split())


def forms_of(word: str, language: str | None = "en") -> set[str]:
    """The normalised written forms of `word` (without any that normalise to "")."""
    return {form for form in map(normalise, written_forms(word, language).values()) if form}


def is_word(text: str, word: str, language: str | None = "en") -> bool:
    """The normalised transcript is one of the word's normalised written forms ("7." is "seven"; never when the
    word normalises to "")."""
    return normalise(text) in forms_of(word, language)


def has_word(text: str, word: str, language: str | None = "en") -> bool:
    """One of the word's normalised written forms appears as a whole word (or words) in the normalised transcript
    (never when the word normalises to "")."""
    return any(f" {form} " in f" {normalise(text)} " for form in forms_of(word, language))


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


WrittenTokens = dict[str, list[list[int]]]  # written form's kind (`written_forms`) -> its surface forms' token ids


def written_tokens(tokenizer: Tokenizer, word: str, language: str | None = "en") -> WrittenTokens:
    """Token ids of each surface form of each written form of `word` (`written_forms`, `word_tokens`)."""
    return {kind: word_tokens(tokenizer, text) for kind, text in written_forms(word, language).items()}


def scoring_prefix(tokenizer: Tokenizer) -> tuple[int, ...]:
    """The forced start of a transcript: start-of-transcript, language, task, no-timestamps."""
    return tuple(tokenizer.sot_sequence_including_notimestamps)


class ScoredWord(NamedTuple):
    """A word as the decoder scores it (`wpatch.patching.decoding.word_logprobs`): log P(transcript starts with one of
    `forms` | `prefix`), summed over the forms; with `best`, the largest of its written forms' such sums."""

    prefix: tuple[int, ...]  # the forced transcript start (`scoring_prefix`) and any words before this one
    forms: tuple[tuple[int, ...], ...]  # token ids of each surface form (`word_tokens`), written form by written form
    best: tuple[int, ...] = ()  # "best": how many of `forms` each written form has, in order; empty: sum over all


def scored_word(
    tokenizer: Tokenizer, forms: list[list[int]] | WrittenTokens, context: str = "", word_form: WordForm = "sum"
) -> ScoredWord:
    """The word whose surface forms have token ids `forms` (one written form's, or each written form's:
    `written_tokens`), scored after `tokenizer`'s forced transcript start and the transcript up to the word
    (`context`, e.g. "Say" in a carrier sentence; none for a word alone), by the rule `word_form`: sum (every
    written form's probability summed), best (the most probable written form's), spelled or numeral (that form's
    alone; a word with one written form is scored by it under every rule)."""
    written = forms if isinstance(forms, dict) else {"word": forms}
    if word_form in ("spelled", "numeral") and word_form in written:
        written = {word_form: written[word_form]}
    prefix = scoring_prefix(tokenizer) + (tuple(tokenizer.encode(" " + context)) if context else ())
    every = tuple(tuple(form) for group in written.values() for form in group)
    best = tuple(len(group) for group in written.values()) if word_form == "best" and len(written) > 1 else ()
    return ScoredWord(prefix, every, best)


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
