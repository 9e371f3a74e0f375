"""Screen stimuli: which clean clips does a model hear? `python scripts/screen.py --pairs-file english --tts hibari`.

Transcribes every unique clip of a pairs set once per speaker (clean runs only, batched) and writes
`screen.csv` (word, lang, voice, clip, transcript, heard, logp) and `screen_summary.csv` (share heard per
voice, language and category) to `--output-dir`, and prints the summary. Bad input ends with one line on
stderr and exit status 2.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from datamodules import PairDataModule
from wpatch.errors import WpatchError
from wpatch.screening import screen_summary


def main(args=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs-file", default="starter", help="a CSV or starter, english, english_spanish")
    parser.add_argument("--limit", type=int, default=None, help="first N pairs")
    parser.add_argument("--model", default="tiny.en", help="model spec (see README, Models)")
    parser.add_argument("--tts", nargs="+", default=["hibari"], help="speakers: hibari kokoro:af_heart espeak ...")
    parser.add_argument("--voices", type=json.loads, default=None, help='language -> voice, e.g. \'{"es": "es"}\'')
    parser.add_argument("--cache-dir", default=None, help="clip cache (default ~/.cache/wpatch/clips)")
    parser.add_argument("--output-dir", default="runs/screen", help="where screen.csv and screen_summary.csv go")
    options = parser.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        data = PairDataModule(
            pairs_file=options.pairs_file,
            limit=options.limit,
            model=options.model,
            tts=options.tts,
            voices=options.voices,
            cache_dir=options.cache_dir,
        )
        start = time.perf_counter()
        data.prepare_data()
        synthesis_s = time.perf_counter() - start
        data.setup("predict")
        screen = data.screen()
    except WpatchError as error:
        print(f"wpatch: error: {error}", file=sys.stderr)
        sys.exit(2)
    output = Path(options.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    summary = screen_summary(screen, data.items)
    screen.to_csv(output / "screen.csv", index=False)
    summary.to_csv(output / "screen_summary.csv", index=False)
    print(summary.to_string(index=False))
    print(
        f"{len(screen)} clips screened with {options.model} in {time.perf_counter() - start:.0f} s "
        f"(synthesis {synthesis_s:.0f} s); tables in {output}"
    )


if __name__ == "__main__":
    main()
