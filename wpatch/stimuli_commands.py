"""The two commands that make and check stimuli before a run: `wpatch screen` (which clean clips a model hears)
and `wpatch stimuli` (a pairs file from a speech corpus's spoken words)."""

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from datamodules import PairDataModule
from wpatch.atomic import write_atomically
from wpatch.errors import WpatchError
from wpatch.stimuli.screening import screen_summary


def screen(args=None) -> None:
    """`wpatch screen`: which clean clips does a model hear? Transcribes every unique clip of a pairs set once per
    speaker (clean runs only, batched), writes `screen.csv` (word, lang, voice, clip, transcript, heard, logp) and
    `screen_summary.csv` (share heard per voice, language and category) to `--output-dir`, and prints the
    summary."""
    parser = argparse.ArgumentParser(prog="wpatch screen", description="Which clean clips does a model hear?")
    parser.add_argument("--pairs-file", default="starter", help="a CSV or starter, english, english_spanish")
    parser.add_argument("--limit", type=int, default=None, help="first N pairs")
    parser.add_argument("--model", default="tiny.en", help="model spec (see docs/models.md)")
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
    if data.voice_choice:  # --tts best: the clips it chose, by voice
        choice = data.voice_choice.record()
        print(f"best: {choice['clips_heard']} of {choice['clips']} clips heard; by voice {choice['clips_by_voice']}")
    print(
        f"{len(screen)} clips screened with {options.model} in {time.perf_counter() - start:.0f} s "
        f"(synthesis {synthesis_s:.0f} s); tables in {output}"
    )


def stimuli(args=None) -> None:
    """`wpatch stimuli CORPUS_DIR --out pairs.csv`: a pairs file from a corpus's spoken words
    (`wpatch.stimuli.corpora` reads the layouts, `wpatch.stimuli.corpus_pairs` forms the pairs; with `--pattern`,
    `wpatch.stimuli.pattern_folder`; with `--pair-by translation`, `wpatch.stimuli.soundthemes`), its recordings
    relative to the file's folder."""
    parser = argparse.ArgumentParser(prog="wpatch stimuli", description="A pairs file from a corpus folder")
    parser.add_argument("corpus_dir", help="Speech Commands, MSWC, or recordings with TextGrid / CTM alignments")
    parser.add_argument("--out", required=True, help="the pairs CSV to write")
    parser.add_argument("--corpus", default=None, help="the corpus's name in every row (default: the folder's)")
    parser.add_argument("--licence", default=None, help="the corpus's licence, carried into every row")
    parser.add_argument("--lang", default="en", help="the words' language where the layout does not name it")
    parser.add_argument("--same-speaker", action="store_true", help="both words of a row from one speaker")
    parser.add_argument("--per-pair", type=int, default=1, help="rows (token pairs) per word pair")
    parser.add_argument("--words", default=None, help="only these words, comma-separated (default: every word)")
    parser.add_argument(
        "--context",
        choices=("recording", "word"),
        default="recording",
        help="a word of an aligned recording heard in its recording (up to 30 s around it, default) or cut to its span",
    )
    parser.add_argument(
        "--pattern", default=None, help="file names as '{word}_{speaker}_{take}.wav' (a labelled folder)"
    )
    parser.add_argument("--pair-by", choices=("translation",), default=None, help="soundtheme word lists by object")
    parser.add_argument("--languages", default="en,es", help="with --pair-by translation: one or two, e.g. en,es")
    parser.add_argument("--seed", type=int, default=0, help="draws takes and partners (--pattern, --pair-by)")
    options = parser.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from wpatch.stimuli.corpora import read_corpus
    from wpatch.stimuli.corpus_pairs import corpus_pairs, keep_words
    from wpatch.stimuli.pattern_folder import read_pattern_folder, speaker_pairs
    from wpatch.stimuli.recordings import pairs_table
    from wpatch.stimuli.soundthemes import language_list, read_soundthemes, translation_pairs

    out = Path(options.out)
    name = options.corpus or Path(options.corpus_dir).resolve().name
    try:
        if options.pattern and options.pair_by:
            raise WpatchError("give --pattern (a labelled folder) or --pair-by translation (soundthemes), not both")
        if options.pattern or options.pair_by:
            if options.pattern:
                found = read_pattern_folder(options.corpus_dir, options.pattern, options.lang, name, options.licence)
                pairs = speaker_pairs(found, options.seed, options.per_pair, options.same_speaker)
            else:
                languages = language_list(options.languages)
                name = options.corpus or "ktuberling"
                found = read_soundthemes(options.corpus_dir, languages, name, options.licence)
                pairs = translation_pairs(found, languages, options.seed)
            table, words, spoken = pairs_table(pairs), len({(r.language, r.word) for r in found}), len(found)
        else:
            tokens = read_corpus(options.corpus_dir, options.lang, options.context)
            if options.words:
                tokens = keep_words(tokens, [w.strip().lower() for w in options.words.split(",")], options.corpus_dir)
            table = corpus_pairs(tokens, name, options.licence or "CC BY 4.0", options.same_speaker, options.per_pair)
            words, spoken = tokens.word.nunique(), len(tokens)
    except WpatchError as error:
        print(f"wpatch: error: {error}", file=sys.stderr)
        sys.exit(2)
    for side in "ab":
        table[f"audio_{side}"] = [
            os.path.relpath(Path(a).resolve(), out.resolve().parent) for a in table[f"audio_{side}"]
        ]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, table.to_csv(index=False, float_format="%.6f", lineterminator="\n"))
    print(f"{len(table)} pairs of {words} words ({spoken} spoken) from {name} written to {out}")
