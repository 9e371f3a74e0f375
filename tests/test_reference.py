"""No result may change: the pipeline's predictions.csv, row for row, against references made before the refactor
of issue 11 (tests/data/reference_*.csv).

The runs use the small seeded random Whisper of conftest.py and recordings synthesised here from seeded noise and
tones (no TTS backend), so every input is reproducible. Experiment A's run covers the whole-block fast path (block
output, all frames), the general path (mlp_out, the word window, sliding-window sweeps), both patch directions and
the control donor; Experiment B's covers a multilingual model with language detection (p_source_language).

Text, integer and boolean columns must be equal exactly; floats to 1e-6 relative (fp32 on one machine gives the
same bits, but another CPU's kernels may round the last bit differently). To remake the references deliberately:
`WPATCH_WRITE_REFERENCE=1 python -m pytest tests/test_reference.py`.
"""

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile

from scripts.predict import main
from tests.conftest import SMALL_DIMS, random_whisper, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
FLOATS = ["logp_source", "logp_target", "score", "p_source_language", "ld_source_clean", "ld_target_clean", "effect"]


def recording(path: Path, seed: int) -> str:
    """A 1 s clip: silence, a seeded stretch of tones and noise (the "word"), silence; 16 kHz, 16-bit."""
    rng = np.random.default_rng(seed)
    t = np.arange(16000) / 16000
    start = rng.uniform(0.1, 0.4)
    voiced = (t >= start) & (t < start + rng.uniform(0.2, 0.5))
    tones = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(150, 3000, 4))
    samples = 0.1 * voiced * (tones / 4 + 0.5 * rng.standard_normal(len(t)))
    soundfile.write(path, samples.astype(np.float32), 16000, subtype="PCM_16")
    return path.name


def pairs_csv(folder: Path, rows: list[tuple]) -> str:
    """A pairs file whose every word has a recording made by `recording` (seeded by the word's position)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["word_a,word_b,lang_a,lang_b,category,audio_a,audio_b"]
    for i, (a, b, lang_a, lang_b, category) in enumerate(rows):
        audio_a, audio_b = recording(folder / f"{i}a.wav", 2 * i), recording(folder / f"{i}b.wav", 2 * i + 1)
        lines.append(f"{a},{b},{lang_a},{lang_b},{category},{audio_a},{audio_b}")
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    return str(folder / "pairs.csv")


def predict(tmp_path: Path, model: str, config: str, pairs: str, *extra) -> pd.DataFrame:
    out = tmp_path / "out"
    main(
        [
            "--config",
            str(ROOT / f"configs/{config}.yaml"),
            "--model.model",
            model,
            "--data.pairs_file",
            pairs,
            "--data.tts",
            "espeak",
            "--data.cache_dir",
            str(tmp_path / "clips"),
            "--data.batch_size",
            "2",
            "--writer.output_dir",
            str(out),
            "--trainer.enable_progress_bar",
            "false",
            *extra,
        ]
    )
    return out / "predictions.csv"


def compare(made: Path, name: str) -> None:
    reference = DATA / name
    if os.environ.get("WPATCH_WRITE_REFERENCE"):
        shutil.copyfile(made, reference)
    read = dict(keep_default_na=False, na_values={"p_source_language": [""], "effect": [""]})
    new, old = pd.read_csv(made, **read), pd.read_csv(reference, **read)
    assert list(new.columns) == list(old.columns) and len(new) == len(old)
    exact = [c for c in old.columns if c not in FLOATS]
    for column in exact:
        differ = new[column] != old[column]
        assert not differ.any(), f"{column} differs in {differ.sum()} rows, first: row {differ.idxmax()}"
    for column in FLOATS:
        a, b = new[column].astype(float), old[column].astype(float)
        assert (a.isna() == b.isna()).all(), column
        gap = ((a - b).abs() / (1 + b.abs())).fillna(0)
        assert gap.max() <= 1e-6, f"{column} differs by {gap.max():.2e} (relative) in row {gap.idxmax()}"


def test_experiment_a_predictions_equal_the_reference(tmp_path, small_model_path):
    pairs = pairs_csv(
        tmp_path / "stimuli", [("bat", "pat", "en", "en", "consonant"), ("hot", "cold", "en", "en", "semantic")]
    )
    made = predict(
        tmp_path,
        small_model_path,
        "experiment_a",
        pairs,
        "--model.source_layers",
        "[0, 2]",
        "--model.target_layers",
        "[0, 1]",
        "--model.sites",
        "[block_out, mlp_out]",
        "--model.windows",
        "[all, word]",
        "--model.sweep",
        "[10, 10, 30]",
        "--model.directions",
        "[denoising, noising]",
        "--model.control",
        "true",
        "--model.min_separation=-1e9",
    )
    compare(made, "reference_a.csv")


def test_experiment_b_predictions_equal_the_reference(tmp_path):
    multilingual = save_checkpoint(
        random_whisper(dataclasses.replace(SMALL_DIMS, n_vocab=51865), seed=3), tmp_path / "ml.pt"
    )
    pairs = pairs_csv(
        tmp_path / "stimuli",
        [("telephone", "teléfono", "en", "es", "cognate"), ("cat", "gato", "en", "es", "non-cognate")],
    )
    made = predict(tmp_path, multilingual, "experiment_b", pairs, "--model.windows", "[all, word]")
    compare(made, "reference_b.csv")
