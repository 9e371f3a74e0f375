"""A run's life: killed (SIGKILL) or stopped (SIGINT; SIGTERM under 2-process DDP) at several points, between
batches and during the final merge, then resumed, gives predictions.csv byte for byte as an uninterrupted run;
the folder lock; settings checked on resume. The runs signal themselves at named points (WPATCH_FAULT)."""

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.predict_run import main, predict_args
from tests.same_rows import assert_same_table
from wpatch.errors import WpatchError
from wpatch.run_folder.folder import check_writable, claim_folder
from wpatch.run_folder.writer import PatchingResultsWriter

ROOT = Path(__file__).resolve().parents[1]
PAIRS = "word_a,word_b\nbat,pat\nhot,cold\n"  # 4 items, each its own source clip: 4 batches of 1


def args(tmp_path, model, out, *extra, pairs=PAIRS):
    """Two pairs, one item a batch (4 parts), layers 0 and 2, three tokens at most."""
    layers = ("--model.source_layers", "[0, 2]", "--model.target_layers", "[0, 2]")
    return predict_args(tmp_path, model, out, *extra, pairs=pairs, batch_size=1, max_tokens=3, options=layers)


def script(arguments, fault=None, env=None, **popen):
    """scripts/predict.py in a new process (WPATCH_FAULT=fault makes it signal itself at that point; `env` adds
    variables)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})} | ({"WPATCH_FAULT": fault} if fault else {})
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts/predict.py"), *arguments],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def parts(out):
    return sorted(p.name for p in (out / "parts").glob("items-*.csv"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_model_path):
    """An uninterrupted run."""
    tmp_path = tmp_path_factory.mktemp("runs")
    main(args(tmp_path, small_model_path, tmp_path / "reference"))
    return tmp_path, (tmp_path / "reference" / "predictions.csv").read_bytes()


def test_killed_or_stopped_at_several_points_then_resumed_gives_the_same_bytes(
    reference, small_model_path, monkeypatch, capsys
):
    tmp_path, expected = reference
    out = tmp_path / "killed"
    started = time.time()
    run = script(args(tmp_path, small_model_path, out), fault="part2:SIGKILL")
    assert run.wait(timeout=300) == -signal.SIGKILL
    assert len(parts(out)) == 2 and not (out / "summary.json").exists()
    # resumed, then Ctrl-C (SIGINT) after its first batch (which takes at least a second): stops with the command
    # that continues the run
    monkeypatch.setenv("WPATCH_FAULT", "part1:SIGINT")
    write = PatchingResultsWriter.write_on_batch_end
    monkeypatch.setattr(PatchingResultsWriter, "write_on_batch_end", lambda *a, **k: time.sleep(1) or write(*a, **k))
    handler = signal.getsignal(signal.SIGINT)  # SIG_IGN, not Python's, under a shell's background job
    with pytest.raises(SystemExit) as stopped:
        main(args(tmp_path, small_model_path, out, "--writer.resume", "true"))
    monkeypatch.setattr(PatchingResultsWriter, "write_on_batch_end", write)
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 130 and len(parts(out)) == 3
    assert "stopped by SIGINT; every finished batch is kept; continue with: " in err[-1]
    assert err[-1].endswith(f"--writer.output_dir {out} --trainer.enable_progress_bar false --writer.resume true")
    assert signal.getsignal(signal.SIGINT) is handler  # the run's handlers are gone, the caller's are back
    # killed again after every part is written and predictions.csv is merged, before the tables and summary
    resumed = script(args(tmp_path, small_model_path, out, "--writer.resume", "true"), fault="merged:SIGKILL")
    assert resumed.wait(timeout=300) == -signal.SIGKILL
    assert len(parts(out)) == 4 and (out / "predictions.csv").exists() and not (out / "summary.json").exists()
    # every item is done: resuming only merges and finishes (Lightning would skip its empty predict loop)
    monkeypatch.delenv("WPATCH_FAULT")
    main(args(tmp_path, small_model_path, out, "--writer.resume", "true"))
    assert (out / "predictions.csv").read_bytes() == expected
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"]["all"]["items"] == 4 and (out / "matrices.csv").exists()
    assert [s["items_done"] for s in json.loads((out / "run.json").read_text())["sessions"]] == [0, 2, 3, 4]
    # the wall time sums the sessions' work (the second session's batch alone took a second), not only the last
    # session's merge
    assert 1 < summary["wall_time_s"] < time.time() - started


def test_sigterm_during_clip_synthesis_stops_before_the_next_clip(reference, small_model_path):
    tmp_path, _ = reference
    out, clips = tmp_path / "stopped-synthesis", tmp_path / "fresh-clips"
    run = script(args(tmp_path, small_model_path, out, "--data.cache_dir", str(clips)), fault="synthesis1:SIGTERM")
    _, err = run.communicate(timeout=300)
    assert run.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM; every finished batch is kept; continue with: " in err.strip().splitlines()[-1]
    assert len(list(clips.rglob("*.wav"))) == 1 and not parts(out)  # 1 of the 4 clips: stopped before the next


def test_ddp_sigterm_stops_every_rank_then_resume(reference, small_model_path):
    tmp_path, _ = reference
    out = tmp_path / "ddp"
    run = script(
        args(tmp_path, small_model_path, out, "--trainer.devices", "2", "--trainer.strategy", "ddp"),
        fault="part1:SIGTERM",
        start_new_session=True,
    )  # rank 0 (the process a scheduler signals) is signalled
    try:
        _, err = run.communicate(timeout=300)
        for _ in range(100):
            os.killpg(run.pid, 0)
            time.sleep(0.1)
        pytest.fail("a DDP process outlived the stopped run")
    except ProcessLookupError:  # the run's process group is empty: every rank ended
        pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM; every finished batch is kept; continue with: " in err.strip().splitlines()[-1]
    assert 1 <= len(parts(out)) < 4 and not (out / "summary.json").exists()
    main(args(tmp_path, small_model_path, out, "--writer.resume", "true"))
    assert_same_table(out / "predictions.csv", tmp_path / "reference" / "predictions.csv")


def test_second_signal_stops_at_once():
    code = (
        "import os, signal, time\nfrom wpatch.run_folder.folder import StopOnSignal\n"
        "stop = StopOnSignal(); stop.install()\n"
        "os.kill(os.getpid(), signal.SIGINT)\nassert stop.signum == signal.SIGINT\n"
        "os.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(60)\n"
    )
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 128 + signal.SIGTERM and time.time() - started < 30
    assert "SIGINT received: stopping before the next batch" in done.stderr and "stopped at once" in done.stderr


def test_folder_in_use_is_refused_and_a_killed_holder_leaves_it_free(reference, small_model_path, capsys):
    tmp_path, _ = reference
    out = tmp_path / "locked"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from pathlib import Path; from wpatch.run_folder.folder import claim_folder; "
            f"lock = claim_folder(Path({str(out)!r})); print('locked', flush=True); input()",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit) as refused:
            main(args(tmp_path, small_model_path, out))
        assert refused.value.code == 2
        assert f"output directory {out} is in use by another run (pid {holder.pid})" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    claim_folder(out).close()  # the lock died with its holder


def test_resume_with_other_settings_is_refused_and_code_version_recorded(reference, small_model_path, capsys):
    tmp_path, _ = reference
    out = tmp_path / "settings"
    shutil.copytree(tmp_path / "reference", out)
    (out / "summary.json").unlink()  # as if killed during the final merge
    for other, message in (
        (["--data.limit", "1"], "holds a run with limit=None, not 1;"),
        (["--model.min_separation", "2"], "holds a run with min_separation=1.0, not 2.0;"),
    ):
        with pytest.raises(SystemExit) as refused:
            main(args(tmp_path, small_model_path, out, "--writer.resume", "true", *other))
        assert refused.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(args(tmp_path, small_model_path, out, "--writer.resume", "true", pairs=PAIRS.replace("hot", "hat")))
    assert "holds a run with pairs_sha256=" in capsys.readouterr().err
    # the same settings from another code version: resumed (here: finished), and the version recorded
    run = json.loads((out / "run.json").read_text())
    run["sessions"][-1]["code_version"] = "0.0.0-older"
    (out / "run.json").write_text(json.dumps(run))
    main(args(tmp_path, small_model_path, out, "--writer.resume", "true"))
    assert "started by code version 0.0.0-older" in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["sessions"][-1]["code_version"] != "0.0.0-older"
    assert (out / "summary.json").exists()


def test_an_empty_or_foreign_output_folder_is_refused_and_left_as_it_was(
    reference, small_model_path, monkeypatch, capsys
):
    tmp_path, _ = reference
    mine = tmp_path / "mine"
    mine.mkdir()
    files = {"report.md": "my notes\n", "config.yaml": "mine: 1\n", "cells.csv": "a,b\n1,2\n"}
    for name, text in files.items():
        (mine / name).write_text(text)
    monkeypatch.chdir(mine)  # `--writer.output_dir ''` would be this folder
    for out, message in (
        ("", "--writer.output_dir is empty"),
        (str(mine), f"output directory {mine} holds files that are not a wpatch run's (cells.csv, "),
    ):
        with pytest.raises(SystemExit) as refused:
            main(args(tmp_path, small_model_path, out))
        err = capsys.readouterr().err.strip().splitlines()
        assert refused.value.code == 2 and len(err) == 1 and message in err[0], err
        assert "choose another --writer.output_dir" in err[0]
        assert {p.name: p.read_text() for p in mine.iterdir()} == files  # nothing written, nothing overwritten


def test_a_read_only_file_system_is_named_with_its_way_out(tmp_path, monkeypatch):
    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("tempfile.TemporaryFile", read_only)
    with pytest.raises(WpatchError) as refused:
        check_writable(tmp_path / "out")
    assert str(refused.value) == (
        f"output directory {tmp_path / 'out'} is not writable (Read-only file system); choose another "
        "--writer.output_dir or remount its file system read-write"
    )


@pytest.mark.parametrize("target", ["predictions.csv", "matrices.csv", "figures/score_matrix.png"])
def test_disk_full_while_finishing_says_which_file_then_resume_works(
    reference, small_model_path, monkeypatch, capsys, target
):
    """A write that fails for want of space (OSError 28, with no file name: what write() raises) during the merge,
    a table or a figure: one line naming the file, the parts kept, the command that continues; then it does."""
    import matplotlib.figure
    import pandas as pd

    tmp_path, expected = reference
    out = tmp_path / f"full-{Path(target).stem}"
    shutil.copytree(tmp_path / "reference", out)
    (out / "summary.json").unlink()  # every part written, the run not finished

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if target == "predictions.csv":
        monkeypatch.setattr(pd.DataFrame, "to_csv", full)  # the merge's write
    elif target == "matrices.csv":
        write_text = Path.write_text
        monkeypatch.setattr(
            Path, "write_text", lambda p, *a, **k: full() if "matrices.csv" in p.name else write_text(p, *a, **k)
        )
    else:
        savefig = matplotlib.figure.Figure.savefig
        monkeypatch.setattr(
            matplotlib.figure.Figure,
            "savefig",
            lambda f, path, *a, **k: full() if "score_matrix.png" in str(path) else savefig(f, path, *a, **k),
        )
    with pytest.raises(SystemExit) as failed:
        main(args(tmp_path, small_model_path, out, "--writer.resume", "true"))
    err = capsys.readouterr().err
    assert failed.value.code != 0 and "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert f"could not write {out / target} (No space left on device)" in line, line
    assert "every finished part is kept" in line and line.endswith("--writer.resume true")
    assert not (out / "summary.json").exists()
    monkeypatch.undo()
    main(args(tmp_path, small_model_path, out, "--writer.resume", "true"))
    assert (out / "predictions.csv").read_bytes() == expected and (out / "summary.json").exists()


def two_nodes(arguments, fault=None):
    """Two processes as torchrun starts one per node (node ranks 0 and 1, one device each), meeting on 127.0.0.1;
    node 0 gets `fault`."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    arguments = [*arguments, "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp"]
    nodes = []
    for rank in (0, 1):
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank)}
        env |= {"GROUP_RANK": str(rank), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "TORCHELASTIC_RUN_ID": "test"}
        nodes.append(script(arguments, fault=fault if rank == 0 else None, env=env, start_new_session=True))
    return nodes


def test_two_nodes_equal_one_process_and_sigterm_to_node_0_stops_both_then_resume(tmp_path, small_model_path):
    """Three pairs (6 source clips): a stop after node 0's first part leaves at least one clip per node to resume."""
    pairs = PAIRS + "ship,sheep\n"
    main(args(tmp_path, small_model_path, tmp_path / "one", pairs=pairs))
    out = tmp_path / "nodes"
    nodes = two_nodes(args(tmp_path, small_model_path, tmp_path / "nodes-whole", pairs=pairs))
    errors = [node.communicate(timeout=300)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    assert_same_table(tmp_path / "nodes-whole" / "predictions.csv", tmp_path / "one" / "predictions.csv")
    nodes = two_nodes(args(tmp_path, small_model_path, out, pairs=pairs), fault="part1:SIGTERM")  # node 0 signalled
    try:
        errors = [node.communicate(timeout=120)[1] for node in nodes]
    finally:
        for node in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
    assert [node.returncode for node in nodes] == [143, 0], errors[0][-2000:] + errors[1][-2000:]
    assert "stopped by SIGTERM; every finished batch is kept; continue with: " in errors[0].strip().splitlines()[-1]
    assert 1 <= len(parts(out)) <= 4 and not (out / "summary.json").exists()
    nodes = two_nodes(args(tmp_path, small_model_path, out, "--writer.resume", "true", pairs=pairs))
    errors = [node.communicate(timeout=300)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    assert_same_table(out / "predictions.csv", tmp_path / "one" / "predictions.csv")
