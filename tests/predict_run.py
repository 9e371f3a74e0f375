"""The one way the tests run `wpatch predict` on a small pairs file in this process: `predict_args` makes the
arguments, `main` (the command itself) runs them."""

from pathlib import Path

import yaml

from wpatch.cli import predict as main  # noqa: F401 (the tests' entry point: `python scripts/predict.py` is this)

ROOT = Path(__file__).resolve().parents[1]
BAT_PAT = "word_a,word_b\nbat,pat\n"


def speaks_best(config: str) -> bool:
    """Whether `configs/<config>.yaml` speaks with the per-word voice choice (`--data.tts best`)."""
    return yaml.safe_load((ROOT / f"configs/{config}.yaml").read_text())["data"].get("tts") == "best"


def predict_args(
    folder: Path,
    model: str,
    out: Path | None = None,
    *extra: str,
    pairs: str | Path = BAT_PAT,
    config: str = "experiment_a",
    batch_size: int | None = 2,
    max_tokens: int | None = None,
    options: tuple[str, ...] = (),
) -> list[str]:
    """A run of `configs/<config>.yaml` on `model`: `pairs` (a pairs file's text, written to folder/pairs.csv, or
    the Path of one), clips cached in folder/clips, `batch_size` source clips a batch (None: the config's), spoken
    by hibari where the config says `best`, then `options`, output in `out` (None: folder/out), no progress bar,
    then `extra`."""
    folder = Path(folder)
    if not isinstance(pairs, Path):
        (folder / "pairs.csv").write_text(pairs)
    return [
        "--config",
        str(ROOT / f"configs/{config}.yaml"),
        "--model.model",
        model,
        "--data.pairs_file",
        str(pairs if isinstance(pairs, Path) else folder / "pairs.csv"),
        "--data.cache_dir",
        str(folder / "clips"),
        *(["--data.batch_size", str(batch_size)] if batch_size else []),
        *(["--model.max_tokens", str(max_tokens)] if max_tokens else []),
        *(
            ["--data.tts", "hibari"] if speaks_best(config) else []
        ),  # `best` screens with the run's model: a random one hears nothing
        *options,
        "--writer.output_dir",
        str(folder / "out" if out is None else out),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]
