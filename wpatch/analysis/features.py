"""Phonetic-feature maps: every measure grouped by the phonetic feature a minimal pair changes and by where in the
word it changes (onset, nucleus, coda), with bootstrap intervals over pairs (and voices, when a run has several).

The pairs CSV carries each minimal pair's changed phonemes (ARPAbet), their position and, for consonants, the
feature (voicing, place or manner). A vowel pair is counted under every vowel feature on which its two vowels
differ (`VOWELS`: height, backness, rounding, length), so `bit`/`bat` counts for height, and `beet`/`boot` for
backness and rounding. Semantic pairs change no phonetic feature and are left out. The writer keeps each pair's
features in the run's folder (`PAIR_FEATURES`), so a run moved elsewhere is analysed with them.
"""

import logging
from pathlib import Path

import pandas as pd

from wpatch.analysis.stats import pooled_interval
from wpatch.atomic import write_atomically
from wpatch.errors import WpatchError
from wpatch.rows import CONDITION, with_sweep_start
from wpatch.stimuli.pairs_file import read_pairs

# General American vowels: (height, backness, rounding, length); a diphthong by its first part, as tense
VOWELS = {
    "IY": ("high", "front", "unrounded", "tense"),
    "IH": ("high", "front", "unrounded", "lax"),
    "EY": ("mid", "front", "unrounded", "tense"),
    "EH": ("mid", "front", "unrounded", "lax"),
    "AE": ("low", "front", "unrounded", "lax"),
    "AA": ("low", "back", "unrounded", "tense"),
    "AO": ("mid", "back", "rounded", "tense"),
    "OW": ("mid", "back", "rounded", "tense"),
    "OY": ("mid", "back", "rounded", "tense"),
    "UH": ("high", "back", "rounded", "lax"),
    "UW": ("high", "back", "rounded", "tense"),
    "AH": ("mid", "central", "unrounded", "lax"),
    "ER": ("mid", "central", "unrounded", "tense"),
    "AY": ("low", "central", "unrounded", "tense"),
    "AW": ("low", "central", "unrounded", "tense"),
}
VOWEL_FEATURES = ("height", "backness", "rounding", "length")
log = logging.getLogger(__name__)
PAIR_FEATURES = "pair_features.csv"  # a run's pairs' phonetic features (pair_id, feature, position), in its folder
FEATURE_COLUMNS = ["feature", "position", *CONDITION, "source_layer", "target_layer", "sweep_start", "measure"]


def vowel_features(a: str, b: str) -> list[str]:
    """The vowel features on which ARPAbet vowels `a` and `b` differ (stress digits ignored); ['vowel quality']
    when the table tells them apart on none, or does not know one."""
    a, b = a.rstrip("012"), b.rstrip("012")
    if a not in VOWELS or b not in VOWELS:
        return ["vowel quality"]
    changed = [name for name, x, y in zip(VOWEL_FEATURES, VOWELS[a], VOWELS[b]) if x != y]
    return changed or ["vowel quality"]


def changed_features(pairs: pd.DataFrame) -> pd.DataFrame:
    """(pair_id, feature, position): one row per phonetic feature a minimal pair changes. Consonant pairs keep their
    labelled feature; vowel pairs get each vowel feature their vowels differ on; other pairs (semantic, or a file
    without the phonetic columns) none."""
    out = []
    columns = {"category", "feature", "position", "phoneme_a", "phoneme_b"}
    if not columns <= set(pairs.columns):
        return pd.DataFrame(columns=["pair_id", "feature", "position"])
    for pair in pairs.itertuples():
        if pair.category == "consonant" and isinstance(pair.feature, str) and pair.feature:
            out.append((pair.pair_id, pair.feature, pair.position))
        elif pair.category == "vowel":
            out += [(pair.pair_id, f, pair.position) for f in vowel_features(pair.phoneme_a, pair.phoneme_b)]
    return pd.DataFrame(out, columns=["pair_id", "feature", "position"])


def write_pair_features(folder, pairs: pd.DataFrame) -> None:
    """`PAIR_FEATURES` in a run's folder: the `changed_features` of the run's pairs (the checked pairs table), so
    that the analysis of the run, wherever its folder is later, needs nothing outside it."""
    write_atomically(Path(folder) / PAIR_FEATURES, changed_features(pairs).to_csv(index=False))


def run_features(folder, settings: dict) -> pd.DataFrame:
    """The `changed_features` of a run's pairs, from its folder (`PAIR_FEATURES`). A run written before the folder
    kept them has them from its pairs file (settings: pairs_file, limit) while that can still be read; where it
    cannot (the run was moved), a warning says the features are left out."""
    path = Path(folder) / PAIR_FEATURES
    if path.is_file():
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    try:
        pairs = read_pairs(settings.get("pairs_file"), settings.get("limit"))
    except (WpatchError, OSError) as error:
        log.warning(
            f"wpatch: warning: {folder} has no {PAIR_FEATURES} (a run from an older wpatch) and its pairs file "
            f"cannot be read ({error}); features.csv is left out: report the run where its pairs file is"
        )
        pairs = pd.DataFrame()
    return changed_features(pairs)


def feature_cells(rows: pd.DataFrame, features: pd.DataFrame, measures: list[str]) -> pd.DataFrame:
    """features.csv: one row per feature x position (each position, and `all`) x condition x layer pair x sweep
    window start (-1 outside sweeps) x measure, with the mean over pairs, its 95% bootstrap interval over pairs (and
    voices) and the number of pairs. The effect counts only rows whose effect is valid."""
    if features.empty:
        return pd.DataFrame(columns=[*FEATURE_COLUMNS, "mean", "low", "high", "pairs"])
    rows = with_sweep_start(rows)
    both = rows.merge(features, on="pair_id")
    both = pd.concat([both, both.assign(position="all")], ignore_index=True)
    out = []
    keys = [k for k in FEATURE_COLUMNS if k != "measure"]
    for key, frame in both.groupby(keys, sort=True):
        for measure in measures:
            values = frame[frame["effect_valid"]] if measure == "effect" else frame
            mean, low, high, pairs = pooled_interval(values, measure)
            if pairs:
                out.append((*key, measure, mean, low, high, pairs))
    return pd.DataFrame(out, columns=[*FEATURE_COLUMNS, "mean", "low", "high", "pairs"])


def feature_map(cells: pd.DataFrame, feature: str, condition: dict, position: str = "all") -> pd.DataFrame:
    """One feature's effect map out of `feature_cells`: layer x window start for a sweep condition, else source x
    target layer."""
    mine = cells[
        (cells["feature"] == feature)
        & (cells["position"] == position)
        & (cells["measure"] == "effect")
        & (cells[CONDITION] == pd.Series(condition)).all(axis=1)
    ]
    index, columns = (
        ("target_layer", "sweep_start") if condition["window"] == "sweep" else ("source_layer", "target_layer")
    )
    return mine.pivot_table(index=index, columns=columns, values="mean", aggfunc="mean", dropna=False).astype(float)
