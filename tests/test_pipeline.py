"""Experiment A end to end through LightningCLI, the real Trainer, the writer and TensorBoard."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import whisper
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from datamodules import PairDataModule
from tests.conftest import SMALL_DIMS, random_whisper, save_checkpoint
from tests.predict_run import main, predict_args
from tests.same_rows import assert_same_table
from wpatch.analysis import read_matrix
from wpatch.errors import WpatchError
from wpatch.models.loading import load_model
from wpatch.rows import ROW_COLUMNS
from wpatch.run_folder.writer import PatchingResultsWriter, write_part
from wpatch.text import scoring_prefix, tokenizer_for, word_tokens

ROOT = Path(__file__).resolve().parents[1]
PAIRS = "word_a,word_b,category\nbat,pat,consonant\nhot,cold,semantic\nship,sheep,vowel\n"


def documented_columns() -> set[str]:
    """The columns README.md documents under "Reading the measures" (read from its table, not from the code)."""
    section = (ROOT / "README.md").read_text().split("## Reading the measures")[1].split("\n## ")[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([a-z_]+)`", row)}


def matrix_of(out, measure, group="all"):
    """A layer matrix out of the run's long-form matrices.csv."""
    return read_matrix(pd.read_csv(out / "matrices.csv", keep_default_na=False), measure, group)


def run(tmp_path, model, out, *extra, pairs=PAIRS, config="experiment_a"):
    return predict_args(tmp_path, model, out, *extra, pairs=pairs, config=config, batch_size=4)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, small_model_path):
    tmp_path = tmp_path_factory.mktemp("run")
    out = tmp_path / "out"
    main(run(tmp_path, small_model_path, out))
    return tmp_path, out


def test_table_has_one_row_per_item_and_layer_pair(finished_run):
    _, out = finished_run
    rows = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(rows.columns) == ROW_COLUMNS and set(ROW_COLUMNS) == documented_columns()
    assert len(rows) == 6 * 3 * 3  # 3 pairs x 2 directions, 3 encoder blocks
    assert not rows.duplicated(["item_id", "source_layer", "target_layer"]).any()
    assert rows["score"].between(0, 1).all()
    expected = 1 / (1 + (rows["logp_target"] - rows["logp_source"]).map(lambda d: __import__("math").exp(d)))
    assert (rows["score"] - expected).abs().max() < 1e-9


@torch.no_grad()
def test_diagonal_rows_equal_an_unpatched_run_and_whisper_decode(finished_run, small_model_path):
    """Under the whole-block patch every diagonal cell (s == t) is the clean source clip: compared here with the
    source clip's unpatched encoder run, openai-whisper's own decode and teacher-forced logits."""
    tmp_path, out = finished_run
    rows = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    dm = PairDataModule(
        pairs_file=str(tmp_path / "pairs.csv"), model=small_model_path, cache_dir=str(tmp_path / "clips")
    )
    dm.setup()
    model = load_model(small_model_path)
    tokenizer = tokenizer_for(model.dims)
    prefix = list(scoring_prefix(tokenizer))
    options = whisper.DecodingOptions(language="en", fp16=False, without_timestamps=True, sample_len=8)

    def logp(word: str, features: torch.Tensor) -> float:
        forms = []
        for form in word_tokens(tokenizer, word):
            logits = model.logits(torch.tensor([prefix + form]), features).log_softmax(-1)[0]
            forms.append(sum(logits[len(prefix) - 1 + i, token] for i, token in enumerate(form)))
        return torch.stack(forms).logsumexp(0).item()

    for item in dm.items.itertuples():
        mel = dm.mels[item.source_clip][None]
        text = whisper.decode(model, mel, options)[0].text.strip()
        clean = model.embed_audio(mel)
        cells = rows[(rows.item_id == item.item_id) & (rows.source_layer == rows.target_layer)]
        assert len(cells) == 3 and (cells.transcript == text).all(), (item.source.word, text)
        assert (cells.logp_source - logp(item.source.word, clean)).abs().max() < 1e-4
        assert (cells.logp_target - logp(item.target.word, clean)).abs().max() < 1e-4


def test_writer_refuses_a_table_with_missing_or_repeated_rows(tmp_path):
    row = dict.fromkeys(ROW_COLUMNS, "") | {
        "item_id": 0,
        "site": "block_out",
        "window": "all",
        "alpha": 1.0,
        "patch_direction": "denoising",
        "donor": "source",
        "source_layer": 0,
        "target_layer": 0,
        "window_start": 0,
    }
    trainer = SimpleNamespace(datamodule=SimpleNamespace(items=[0, 1]))
    module = SimpleNamespace(rows_per_item=2)
    for layers, way_out in (
        ([(0, 0), (0, 1), (1, 0)], "delete the directory"),  # 3 of 4 rows
        ([(0, 0), (0, 1), (1, 0), (1, 0)], "delete the directory"),  # 4 with one repeated
        ([(0, 0), (0, 1)], "its 1 missing items are computed by: .* --writer.resume true"),  # item 1's part lost
    ):
        writer = PatchingResultsWriter(output_dir=str(tmp_path / str(len(layers))))
        writer.parts.mkdir(parents=True)
        table = pd.DataFrame(
            [row | {"item_id": i // 2, "source_layer": s, "target_layer": t} for i, (s, t) in enumerate(layers)]
        )
        write_part(writer.parts / "items-00000000.csv", table)
        with pytest.raises(
            WpatchError, match=f"holds {len(layers)} rows, expected 2 items x 2 patches once each; {way_out}"
        ):
            writer.finish(trainer, module)
        assert not (writer.output_dir / "predictions.csv").exists()


def test_matrices_are_the_means_of_the_table(finished_run):
    _, out = finished_run
    rows = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    for measure in ("override", "score"):
        matrix = matrix_of(out, measure)
        for s in range(3):
            for t in range(3):
                cell = rows[(rows.source_layer == s) & (rows.target_layer == t)][measure].astype(float).mean()
                assert matrix.iloc[s, t] == pytest.approx(cell)
        vowel = matrix_of(out, measure, "category=vowel")
        assert vowel.iloc[0, 1] == pytest.approx(
            rows[(rows.category == "vowel") & (rows.source_layer == 0) & (rows.target_layer == 1)][measure]
            .astype(float)
            .mean()
        )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"]["all"]["rows"] == 54 and summary["groups"]["category=vowel"]["items"] == 2
    score = matrix_of(out, "score").to_numpy()
    assert summary["groups"]["all"]["score"]["diagonal_mean"] == pytest.approx(score.diagonal().mean())


def test_tensorboard_holds_the_heatmaps(finished_run):
    _, out = finished_run
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert "override_matrix/all" in tags["images"] and "score_matrix/all" in tags["images"]
    image = events.Images("score_matrix/all")[0]
    assert image.width > 100 and image.encoded_image_string.startswith(b"\x89PNG")
    assert "hparam/score_diagonal_mean" in tags["scalars"] and len(tags["scalars"]) <= 10
    assert (out / "figures/score_matrix.png").read_bytes().startswith(b"\x89PNG")
    matrices = pd.read_csv(out / "matrices.csv")
    assert list(matrices.columns) == ["group", "measure", "s", "t", "mean", "low", "high", "n"]
    assert not list(out.glob("*_matrix*.csv")) and not list(out.glob("*.png")) and (out / "report.md").exists()


def test_finished_run_is_refused_and_unfinished_run_resumes(finished_run, small_model_path, capsys):
    tmp_path, out = finished_run
    with pytest.raises(SystemExit) as exit_info:
        main(run(tmp_path, small_model_path, out))
    assert exit_info.value.code == 2 and "already holds a finished run" in capsys.readouterr().err
    # an interrupted copy: no summary, one batch of parts missing
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    (partial / "summary.json").unlink()
    parts = sorted((partial / "parts").glob("items-*.csv"))
    parts[-1].unlink()
    with pytest.raises(SystemExit):
        main(run(tmp_path, small_model_path, partial))
    assert "unfinished run" in capsys.readouterr().err
    main(run(tmp_path, small_model_path, partial, "--writer.resume", "true"))
    assert pd.read_csv(partial / "predictions.csv").equals(pd.read_csv(out / "predictions.csv"))


def test_two_process_ddp_run_gives_the_same_rows(finished_run, small_model_path):
    tmp_path, out = finished_run
    ddp_out = tmp_path / "ddp"
    args = run(tmp_path, small_model_path, ddp_out, "--trainer.devices", "2", "--trainer.strategy", "ddp")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/predict.py"), *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((ddp_out / "parts").glob("items-*.csv"))) == 2  # one batch per rank
    assert_same_table(ddp_out / "predictions.csv", out / "predictions.csv")


def test_a_resume_with_fewer_clips_left_than_processes_finishes_with_the_same_bytes(finished_run, small_model_path):
    """Two source clips left for three processes: the third gets an empty batch, so it too reaches the run's end
    (where the others wait for it), and the resumed run is the uninterrupted one."""
    tmp_path, out = finished_run
    late = tmp_path / "late"
    shutil.copytree(out, late)
    (late / "summary.json").unlink()
    last = sorted((late / "parts").glob("items-*.csv"))[-1]
    assert pd.read_csv(last)["item_id"].nunique() == 2  # two items, each on its own source clip
    last.unlink()
    args = run(tmp_path, small_model_path, late, "--trainer.devices", "3", "--trainer.strategy", "ddp")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/predict.py"), *args, "--writer.resume", "true"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_table(late / "predictions.csv", out / "predictions.csv")


def test_decoding_in_small_chunks_gives_the_same_rows(finished_run, small_model_path):
    tmp_path, out = finished_run
    chunked = tmp_path / "chunked"
    main(run(tmp_path, small_model_path, chunked, "--model.decode_chunk", "5"))
    a, b = (
        pd.read_csv(chunked / "predictions.csv", keep_default_na=False),
        pd.read_csv(out / "predictions.csv", keep_default_na=False),
    )
    floats = ["logp_source", "logp_target", "score", "ld_source_clean", "ld_target_clean", "effect"]
    assert a.drop(columns=floats).equals(b.drop(columns=floats))
    assert ((a[floats].apply(pd.to_numeric) - b[floats].apply(pd.to_numeric)).abs().fillna(0) < 1e-4).all().all()


def test_bad_precision_fails_with_one_line(tmp_path, small_model_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(run(tmp_path, small_model_path, tmp_path / "x", "--trainer.precision", "16-mixed"))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.count("\n") == 0 and "16-mixed is not supported on the CPU" in err
    assert not (tmp_path / "x").exists()


def test_experiment_b_cross_lingual_measures(tmp_path):
    multilingual = save_checkpoint(
        random_whisper(dataclasses.replace(SMALL_DIMS, n_vocab=51865), seed=3), tmp_path / "ml.pt"
    )
    pairs = "word_a,word_b,lang_a,lang_b,category\ntelephone,teléfono,en,es,cognate\ncat,gato,en,es,non-cognate\n"
    out = tmp_path / "b"
    main(run(tmp_path, multilingual, out, pairs=pairs, config="experiment_b"))
    rows = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert len(rows) == 2 * 9 and set(rows.direction) == {"a->b"} and set(rows.source_word) == {"telephone", "cat"}
    assert rows["p_source_language"].astype(float).between(0, 1).all()
    assert rows["transfer"].isin([True, False]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["language"] is None and summary["model"] == multilingual
    assert {"all", "recognised", "category=cognate", "category=non-cognate|recognised"} <= set(summary["groups"])
    language = matrix_of(out, "p_source_language")
    assert language.iloc[1, 2] == pytest.approx(
        rows[(rows.source_layer == 1) & (rows.target_layer == 2)]["p_source_language"].astype(float).mean()
    )


def test_several_voices_in_one_run(tmp_path, small_model_path):
    out = tmp_path / "voices"
    main(
        run(
            tmp_path,
            small_model_path,
            out,
            "--data.tts",
            "[espeak, piper]",
            pairs="word_a,word_b,category\nbat,pat,consonant\n",
        )
    )
    rows = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert rows.groupby("voice")["item_id"].nunique().to_dict() == {"espeak": 2, "piper": 2}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"]["voice=piper"]["items"] == 2
    espeak = matrix_of(out, "score", "voice=espeak")
    piper = matrix_of(out, "score", "voice=piper")
    assert summary["voice_differences_mean_abs"]["espeak vs piper"]["score"] == pytest.approx(
        (espeak - piper).abs().to_numpy().mean()
    )
    diagonals = {voice: summary["groups"][f"voice={voice}"]["score"]["diagonal_mean"] for voice in ("espeak", "piper")}
    spread = summary["voice_spread"]["score"]["diagonal_mean"]
    assert spread["range"] == pytest.approx(abs(diagonals["espeak"] - diagonals["piper"]))
    assert spread["highest"] == {max(diagonals, key=diagonals.get): max(diagonals.values())}
