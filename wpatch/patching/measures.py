"""The measures, as pure functions of a transcript and word log-probabilities, and `result_rows`, which applies
them to every planned row of a batch (README: "Columns of predictions.csv").

Transcript measures compare normalised text (`wpatch.text.normalise`): the whole transcript for a word alone, the
word at the carrier's `{}` for a word in a sentence (and then only where the carrier's other words were kept:
`wpatch.text.word_at`); log-probability measures read log P(word | encoder output, the transcript up to
the word) of the source and target words (`wpatch.text.ScoredWord`, `wpatch.patching.decoding`). Each decoding
is read in the text of the clip it decodes (a patched run in its recipient's): for a carrier sentence both clips
share it, for recorded words in their contexts each clip has its own.
"""

import math

from wpatch.patching.decoder import DecodingPlan
from wpatch.patching.decoding import Decoded
from wpatch.patching.plan import PlannedRow, recipient_side
from wpatch.rows import PairBatch, ResultRow
from wpatch.text import ScoredWord, has_word, is_word, word_at


def override(transcript: str, source_word: str, language: str = "en") -> bool:
    """The patched transcript is the source word (any of its written forms: `wpatch.text.is_word`)."""
    return is_word(transcript, source_word, language)


def retained(transcript: str, target_word: str, language: str = "en") -> bool:
    """The patched transcript is still the target word (any of its written forms)."""
    return is_word(transcript, target_word, language)


def transfer(transcript: str, source_word: str, language: str = "en") -> bool:
    """The source word appears as a whole word in the transcript, in any of its written forms (Experiment B)."""
    return has_word(transcript, source_word, language)


def score(logp_source: float, logp_target: float) -> float:
    """p_source / (p_source + p_target), computed stably from the two log-probabilities."""
    gap = logp_target - logp_source
    return 1.0 / (1.0 + math.exp(gap)) if gap <= 0 else math.exp(-gap) / (1.0 + math.exp(-gap))


def effect(
    logp_source: float, logp_target: float, ld_source_clean: float, ld_target_clean: float, min_separation: float
) -> tuple[float, bool]:
    """(effect, valid): the patched logit difference LD = logp_source - logp_target normalised between the clean
    runs, (LD - ld_target_clean) / (ld_source_clean - ld_target_clean) (0: the target's clean run, 1: the
    source's); NaN and not valid where the clean runs separate the words by less than `min_separation` nats."""
    valid = ld_source_clean - ld_target_clean >= min_separation
    value = (
        (logp_source - logp_target - ld_target_clean) / (ld_source_clean - ld_target_clean) if valid else float("nan")
    )
    return value, valid


def p_source_language(language_probs: dict[str, float] | None, source_lang: str, target_lang: str) -> float:
    """P(source language) / (P(source) + P(target)) from language detection on the patched output; NaN where it
    does not apply (no detection, one language) or neither language has any probability."""
    if not language_probs or source_lang == target_lang:
        return float("nan")
    p_source, p_target = language_probs.get(source_lang, 0.0), language_probs.get(target_lang, 0.0)
    return p_source / (p_source + p_target) if p_source + p_target > 0 else float("nan")


Read = dict[str, tuple[list[ScoredWord], list[ScoredWord]]]  # side -> (source words, target words) in its text


def read_in(plan_row: PlannedRow, decodings: DecodingPlan, batch: PairBatch) -> list[tuple[int, str]]:
    """The decodings a row reads and whose text each is read in: the patched run in its recipient clip's, the
    clean source and target runs in their own."""
    b = plan_row.item
    clean = [(decodings.clean[int(batch[side].clip[b])], side) for side in ("source", "target")]
    return [(decodings.row[plan_row.run], recipient_side(plan_row.patch_direction)), *clean]


def words_to_score(plan: list[PlannedRow], decodings: DecodingPlan, batch: PairBatch, read: Read) -> list[dict]:
    """For each decoding, the words whose log-probability the rows need (ordered, without repeats): both words of
    an item, read in the decoded clip's text (`read[side]`), on its patched decoding and on the clean decodings
    of its source and target clips."""
    asked = [{} for _ in range(len(decodings.decodings))]
    for row in plan:
        for f, side in read_in(row, decodings, batch):
            asked[f].update(dict.fromkeys((read[side][0][row.item], read[side][1][row.item])))
    return asked


def result_rows(
    batch: PairBatch,
    plan: list[PlannedRow],
    decodings: DecodingPlan,
    decoded: Decoded,
    read: Read,
    min_separation: float,
) -> list[ResultRow]:
    """Every planned row with its measures, read off the decoded outputs, each decoding in its clip's text."""
    rows = []
    for row in plan:
        b, patch = row.item, row.run.patch
        (f, recipient), (clean_source, _), (clean_target, _) = read_in(row, decodings, batch)
        gap = {  # logp(source word) - logp(target word) on a decoding, read in that clip's text
            side: decoded.logps[g][read[side][0][b]] - decoded.logps[g][read[side][1][b]]
            for g, side in ((clean_source, "source"), (clean_target, "target"))
        }
        source_word, target_word = read[recipient][0][b], read[recipient][1][b]
        logp = decoded.logps[f]
        value, valid = effect(logp[source_word], logp[target_word], gap["source"], gap["target"], min_separation)
        text, carrier = decoded.transcripts[f], batch[recipient].carrier[b]
        said, kept = word_at(text, carrier)  # the transcript's word where the carrier has it; the carrier kept
        heard, heard_kept = word_at(decoded.transcripts[clean_source], batch["source"].carrier[b])
        languages = decoded.language_probs[f] if decoded.language_probs else None
        words = {side: batch[side].word[b] for side in ("source", "target")}
        langs = {side: batch[side].lang[b] for side in ("source", "target")}
        rows.append(
            ResultRow(
                item_id=int(batch["item_id"][b]),
                site=patch.site,
                source_layer=patch.source_layer,
                target_layer=patch.target_layer,
                window=row.spec.window,
                window_start=patch.start,
                window_end=patch.end,
                alpha=patch.alpha,
                patch_direction=row.patch_direction,
                donor=row.donor,
                donor_word=batch[row.donor].word[b],
                transcript=text,
                override=kept and override(said, words["source"], langs["source"]),
                retained=kept and retained(said, words["target"], langs["target"]),
                transfer=kept and transfer(said, words["source"], langs["source"]),
                logp_source=logp[source_word],
                logp_target=logp[target_word],
                score=score(logp[source_word], logp[target_word]),
                p_source_language=p_source_language(languages, batch["source"].lang[b], batch["target"].lang[b]),
                source_recognised=heard_kept and is_word(heard, words["source"], langs["source"]),
                ld_source_clean=gap["source"],
                ld_target_clean=gap["target"],
                effect=value,
                effect_valid=valid,
                carrier=carrier,
                carrier_kept=kept,
            )
        )
    return rows
