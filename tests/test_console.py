"""What the console says: the plan block a run starts with, `wpatch predict --help`, `wpatch report` and
`wpatch compare` (on small random-model runs)."""

import contextlib
import io
import re
from pathlib import Path

import lightning as L
import pandas as pd
import pytest

from datamodules import PairDataModule
from tests.conftest import random_whisper, save_checkpoint
from tests.predict_run import ROOT, main, predict_args
from wpatch.analysis.figures import number
from wpatch.cli import main as wpatch
from wpatch.patching.autobatch import DEFAULT_BATCH
from wpatch.patching.module import PatchingModule
from wpatch.predict_help import HELP_GROUPS
from wpatch.run_folder.plan_block import plan_block
from wpatch.stimuli.pairs_file import PACKAGED

PAIRS = "word_a,word_b\nbat,pat\nhot,cold\n"  # 4 items (both directions, one voice)


def small_run(tmp_path: Path, model: str, clips: str, name: str = "out", *options: str) -> list[str]:
    """A run of two pairs on layers 0 and 2 (4 layer pairs), clips cached in `clips`."""
    layers = ("--model.source_layers", "[0, 2]", "--model.target_layers", "[0, 2]", *options)
    arguments = predict_args(tmp_path, model, tmp_path / name, pairs=PAIRS, batch_size=2, max_tokens=3, options=layers)
    return [*arguments, "--data.cache_dir", clips]


def test_a_run_starts_with_its_plan_in_one_block(tmp_path, small_model_path, clip_dir, capsys):
    main(small_run(tmp_path, small_model_path, clip_dir))
    out = capsys.readouterr().out.splitlines()
    start = out.index("wpatch predict: the plan")
    block = dict(line.split(maxsplit=1) for line in out[start + 1 : start + 7])
    assert list(block) == ["model", "pairs", "rows", "patches", "device", "output"]
    assert block["model"] == f"{small_model_path} (3 encoder blocks, 2 decoder blocks)"
    assert block["pairs"] == f"{tmp_path / 'pairs.csv'}: 2 pairs, both directions, voices hibari"
    assert block["rows"] == "4 items x 4 patches per item = 16 rows"
    assert block["patches"] == (
        "method patch; sites block_out; windows all; 4 encoder layer pairs; alphas 1.0; denoising"
    )
    assert block["device"] == "cpu x 1, precision 32-true, batch size 2"
    assert block["output"] == str((tmp_path / "out").resolve())
    rows = (tmp_path / "out/predictions.csv").read_text().strip().splitlines()
    assert len(rows) - 1 == 16  # the plan's count is what the run writes


def test_the_plan_counts_each_speaker_once_and_best_as_one(tmp_path, small_model_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("word_a,word_b\nbat,pat\ncat,hat\n")
    module = PatchingModule(model=small_model_path)
    data = PairDataModule(pairs_file=str(pairs), model=small_model_path, tts=["best", "kokoro:af_heart"])
    block = plan_block(L.Trainer(accelerator="cpu", logger=False), module, data, tmp_path / "out").splitlines()
    assert block[2].endswith(
        "2 pairs, both directions, voices best, kokoro:af_heart (best: per word, the first "
        "offline voice the model hears)"
    )
    assert block[3] == f"  rows     8 items x {module.rows_per_item} patches per item = {8 * module.rows_per_item} rows"


def help_text(capsys, *args: str) -> str:
    """What `wpatch predict [args] --help` prints."""
    with pytest.raises(SystemExit):
        wpatch(["predict", *args, "--help"])
    return capsys.readouterr().out


def test_predict_help_is_a_wpatch_help_with_the_packaged_sets_and_the_defaults_that_run(capsys):
    text = help_text(capsys)
    assert text.startswith("usage: wpatch predict ")
    assert "Lightning Trainer command line tool" not in text and "__main__" not in text
    assert "lightning.pytorch.callbacks" not in text and "--trainer.callbacks" not in text
    pairs_help = " ".join(text.split("--data.pairs_file PAIRS_FILE\n", 1)[1].split("--data.limit")[0].split())
    assert f"a packaged set: {', '.join(PACKAGED)} " in pairs_help and "english_heard" in PACKAGED
    for title in HELP_GROUPS.values():
        assert f"\n{title}:\n" in text

    def batch_default(text: str) -> str:
        section = re.search(r"--data\.batch_size BATCH_SIZE\n(.*?)\n  --", text, re.S)[1]
        return re.search(r"default: (\S+)\)$", " ".join(section.split()))[1]

    assert batch_default(text) == str(DEFAULT_BATCH)  # no config: the DataModule's default
    configured = help_text(capsys, "--config", str(ROOT / "configs/experiment_a.yaml"))
    assert batch_default(configured) == "8"  # the config's value, the one that runs
    assert "overridden by the contents of" in configured


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, small_model_path, clip_dir) -> tuple[Path, Path, str]:
    """Two finished runs of the same items, B of another random model of the same depth and with another
    min_separation, and what run A printed."""
    folder = tmp_path_factory.mktemp("runs")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        wpatch(["predict", *small_run(folder, small_model_path, clip_dir, "a")])
    other_model = save_checkpoint(random_whisper(seed=1), folder / "other.pt")
    wpatch(["predict", *small_run(folder, other_model, clip_dir, "b", "--model.min_separation", "0.5")])
    return folder / "a", folder / "b", printed.getvalue()


def test_report_prints_what_the_finished_run_printed(two_runs, capsys):
    run_a, _, printed = two_runs
    closing = printed[printed.index("score by source layer") :].splitlines()
    wpatch(["report", str(run_a)])
    again = capsys.readouterr().out.splitlines()
    assert closing[-2].startswith("wall time ") and closing[-2].endswith(" s; tables, figures and report.md in:")
    assert again == [*closing[:-2], "tables, figures and report.md in:", str(run_a.resolve())]
    assert f"page: {run_a.resolve() / 'report.html'}" in again and (run_a / "report.html").is_file()


def matrix_difference(run_a: Path, run_b: Path, measure: str = "effect") -> pd.Series:
    """B - A of a measure per layer cell (group all), from each run's own matrices.csv."""
    means = [
        pd.read_csv(run / "matrices.csv").query(f"group == 'all' and measure == '{measure}'") for run in (run_a, run_b)
    ]
    a, b = (m.set_index(["s", "t"])["mean"] for m in means)
    return pd.DataFrame({"A": a, "B": b, "B-A": b - a})


def test_compare_says_which_run_is_which_how_they_differ_and_what_it_shows(
    two_runs, small_model_path, tmp_path, capsys
):
    run_a, run_b, _ = two_runs
    wpatch(["compare", str(run_a), str(run_b), "--out", str(tmp_path / "diff.csv")])
    out = capsys.readouterr().out.splitlines()
    assert out[:5] == [
        "compare: run B - run A, cell by cell, group all (every item both runs have)",
        f"  A: {run_a.resolve()}",
        f"  B: {run_b.resolve()}",
        f'  settings that differ: model (A "{small_model_path[:36]}..., B "{str(run_a.parent)[:36]}...); '
        "min_separation (A 1.0, B 0.5)",
        "  a cell: source layer->target layer (@first frame of a sweep window), condition block_out, whole clip, "
        "alpha 1, denoising, donor: source word",
    ]
    assert out[5].startswith("  A, B: the cell's mean score (P source word) in each run; B-A: B minus A (the runs")
    table = out[out.index("") + 1 :]
    table = table[: table.index("")]
    assert table[0].split() == ["cell", "A", "B", "B-A", "interval", "pairs"]  # narrow: one measure
    expected = matrix_difference(run_a, run_b, "score")  # a random model closes no gap: no effect, the score shown
    assert expected["B-A"].abs().min() > 0.001  # twice what printing rounds: A, B and B-A cannot be mixed up
    for line in table[1:]:
        cell, a, b, difference, *interval = line.replace(", ", ",").split()
        s, t = map(int, cell.split("->"))
        for shown, value in zip((a, b, difference), expected.loc[(s, t)]):
            assert abs(float(shown) - value) <= 0.0005 + 1e-12, (cell, shown, value)  # printed to 3 decimals
        low, high = map(float, interval[0].strip("[]").split(","))
        assert low <= float(difference) + 0.0005 and float(difference) - 0.0005 <= high
    assert len(table) - 1 == len(expected)
    assert out[-2:] == [
        f"figure: {(tmp_path / 'diff.png').resolve()} (score B-A per layer cell)",
        f"every measure's A, B, B-A: in {(tmp_path / 'diff.csv').resolve()}",
    ]
    assert (tmp_path / "diff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wide = pd.read_csv(tmp_path / "diff.csv").set_index(["source_layer", "target_layer"])
    assert {"score_a", "score_b", "score_diff", "score_diff_low", "effect_diff_low"} <= set(wide.columns)
    assert (wide["score_diff"] - expected["B-A"].rename_axis(wide.index.names)).abs().max() < 1e-12


def test_the_difference_heatmap_draws_b_minus_a_of_each_layer_cell(two_runs):
    from wpatch.analysis.compare import compare_runs, difference_figure

    run_a, run_b, _ = two_runs
    figure = difference_figure(compare_runs(run_a, run_b), measure="score")
    axes = figure.axes[0]
    drawn = {text.get_position(): text.get_text() for text in axes.texts}  # (column + 0.5, row + 0.5) -> number
    sources = [int(label.get_text()) for label in axes.get_yticklabels()]
    targets = [int(label.get_text()) for label in axes.get_xticklabels()]
    expected = matrix_difference(run_a, run_b, "score")["B-A"]
    assert len(drawn) == len(expected) == len(sources) * len(targets)
    for (x, y), text in drawn.items():
        assert text == number(expected.loc[(sources[int(y)], targets[int(x)])], 3), (x, y, text)
    assert axes.collections[0].get_clim() == (-1.0, 1.0) and "run B - run A" in axes.get_title()


def test_the_plan_names_the_packaged_set_a_run_uses_by_default(tmp_path, small_model_path, clip_dir, capsys):
    arguments = small_run(tmp_path, small_model_path, clip_dir, "out", "--data.limit", "1")
    arguments[arguments.index("--data.pairs_file") + 1] = "null"  # no pairs file: the starter set
    main(arguments)
    out = capsys.readouterr().out
    assert f"  pairs    starter ({PACKAGED['starter']}): 1 pairs, both directions, voices hibari\n" in out
    assert "  rows     2 items x 4 patches per item = 8 rows\n" in out
