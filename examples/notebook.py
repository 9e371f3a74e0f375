"""wpatch from Python in a few lines: run an experiment, load it back, plot a matrix, compare two runs.

    python examples/notebook.py MODEL OUT_DIR [--limit N]

MODEL is a model spec (tiny.en, or a checkpoint path); CI runs this on a small random checkpoint.
"""

import sys

import wpatch
from wpatch.analysis import compare_runs, plot_matrix
from wpatch.cli import predict


def main(model: str, out: str, limit: str = "1") -> None:
    common = [
        "--config",
        "configs/experiment_a.yaml",
        "--model.model",
        model,
        "--data.limit",
        limit,
        "--model.max_tokens",
        "3",
        "--trainer.enable_progress_bar",
        "false",
    ]
    # 1. run: the same options as `wpatch predict` (any --model.* / --data.* / --trainer.* setting)
    predict([*common, "--writer.output_dir", f"{out}/espeak", "--data.tts", "espeak"])
    predict([*common, "--writer.output_dir", f"{out}/espeak-again", "--data.tts", "espeak"])
    # 2. load: a DataFrame with one row per item x patch (empty transcripts stay ""), and summary.json
    rows, summary = wpatch.load_run(f"{out}/espeak")
    print(rows[["source_word", "source_layer", "target_layer", "transcript", "score"]].head())
    print("score diagonal mean:", summary["groups"]["all"]["score"]["diagonal_mean"])
    # 3. plot: a matplotlib Figure (show it in a notebook, or save it)
    plot_matrix(f"{out}/espeak", "score").savefig(f"{out}/score.png")
    # 4. compare: cell-by-cell differences (B - A) with 95% intervals over shared pairs
    print(compare_runs(f"{out}/espeak", f"{out}/espeak-again")[["source_layer", "target_layer", "score_diff"]])


if __name__ == "__main__":
    main(*sys.argv[1:])
