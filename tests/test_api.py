"""`wpatch.run` / `wpatch.load_run` / `Run`: the same run as `wpatch predict`, the model loaded once per process,
bad input as one-line errors."""

import inspect
import signal
import threading

import pandas as pd
import pytest
from matplotlib.figure import Figure

import wpatch
import wpatch.run_folder.writer  # noqa: F401 (the run folder's package is imported, as any run does)
from tests.predict_run import main, predict_args
from wpatch.errors import WpatchError
from wpatch.models import loading
from wpatch.rows import ROW_COLUMNS

PAIRS = pd.DataFrame({"word_a": ["bat", "hot"], "word_b": ["pat", "cold"], "category": ["consonant", "semantic"]})


@pytest.fixture
def loads(monkeypatch):
    """The specs whose weights are read from disk, in order."""
    seen, load = [], loading._load
    monkeypatch.setattr(loading, "_load", lambda spec, *rest: seen.append(spec) or load(spec, *rest))
    monkeypatch.setattr(loading, "_KEPT", {})
    return seen


def python_run(small_model_path, clip_dir, out, **extra):
    return wpatch.run(
        PAIRS,
        model=small_model_path,
        tts="espeak",
        sites=["block_out", "mlp_out"],
        source_layers=[0, 2],
        output_dir=out,
        max_tokens=3,
        batch_size=2,
        cache_dir=clip_dir,
        progress=False,
        **extra,
    )


def test_run_is_a_plain_function_with_its_own_signature_and_docstring():
    """`wpatch.run?` in a notebook shows the function's signature and docstring, not a package's."""
    assert inspect.isfunction(wpatch.run) and wpatch.run is wpatch.api.run
    assert list(inspect.signature(wpatch.run).parameters)[:3] == ["pairs", "model", "sites"]
    assert wpatch.run.__doc__.startswith("Run a patching experiment")


def test_run_is_the_command_and_keeps_the_model(tmp_path, small_model_path, clip_dir, loads):
    first = python_run(small_model_path, clip_dir, tmp_path / "a")
    second = python_run(small_model_path, clip_dir, tmp_path / "b")
    assert loads == [small_model_path], "the second run must not load the model again"
    # 2 pairs x 2 directions x 2 sites x 2 source layers x 3 target layers
    assert first.rows.shape == (2 * 2 * 2 * 2 * 3, len(ROW_COLUMNS))
    pd.testing.assert_frame_equal(first.rows, second.rows)
    # the command with the same settings: the same rows and config.yaml (but for the folder and the pairs file)
    args = predict_args(
        tmp_path,
        small_model_path,
        tmp_path / "cli",
        "--model.sites",
        "[block_out, mlp_out]",
        "--model.source_layers",
        "[0, 2]",
        "--data.tts",
        "espeak",
        "--data.cache_dir",
        clip_dir,
        pairs=PAIRS.to_csv(index=False),
        max_tokens=3,
    )
    main(args[2:])  # without configs/experiment_a.yaml: the defaults, as wpatch.run has them
    command = wpatch.load_run(tmp_path / "cli")
    pd.testing.assert_frame_equal(first.rows, command.rows)
    assert loads == [small_model_path, small_model_path], "the command loads its model itself"

    def config(run):
        text = (run.path / "config.yaml").read_text().replace(str(run.path), "OUT")
        return "\n".join(line for line in text.splitlines() if "pairs_file" not in line and "verbose" not in line)

    assert config(first) == config(command)


def test_load_run_gives_the_same_run_and_the_tuple(tmp_path, small_model_path, clip_dir, loads):
    run = python_run(small_model_path, clip_dir, tmp_path / "a", control=True)
    again = wpatch.load_run(run.path)
    pd.testing.assert_frame_equal(run.rows, again.rows)
    pd.testing.assert_frame_equal(run.matrices, pd.read_csv(run.path / "matrices.csv"))
    pd.testing.assert_frame_equal(run.cells, pd.read_csv(run.path / "cells.csv"))
    rows, summary = wpatch.load_run(run.path)
    assert summary == run.summary and summary["control"] is True and len(rows) == len(run.rows)
    assert isinstance(run.plot("score"), Figure)
    if not run.rows["source_recognised"].any():  # the random model hears nothing: an empty group is refused
        with pytest.raises(WpatchError, match="has no score matrix for group 'recognised'.*groups: all"):
            run.plot("score", group="recognised")
    diff = run.compare(again)
    assert len(diff) and (diff["score_diff"] == 0).all()


def test_bad_input_is_one_line(tmp_path, small_model_path):
    with pytest.raises(WpatchError, match="wpatch.run has no option 'batchsize'; the options are: .*batch_size"):
        wpatch.run(PAIRS, model=small_model_path, batchsize=2, output_dir=tmp_path / "x")
    with pytest.raises(WpatchError, match=r"^batch_size 0 is not a positive number"):
        wpatch.run(PAIRS, model=small_model_path, batch_size=0, output_dir=tmp_path / "x")
    with pytest.raises(WpatchError, match=r"sites.*see --help$") as error:
        wpatch.run(PAIRS, model=small_model_path, sites=["nowhere"], output_dir=tmp_path / "x")
    assert "\n" not in str(error.value)
    with pytest.raises(WpatchError, match="not a wpatch run"):
        wpatch.load_run(tmp_path)
    assert not (tmp_path / "x").exists()


def test_a_new_folder_by_default(tmp_path, monkeypatch):
    from wpatch.api import new_folder

    monkeypatch.chdir(tmp_path)
    first = new_folder()
    (tmp_path / first).mkdir(parents=True)
    second = new_folder()
    assert first.startswith("runs/run-") and second == first + "-2"


def test_a_run_from_another_thread_works_and_a_second_at_once_is_refused(
    tmp_path, small_model_path, clip_dir, monkeypatch, capsys
):
    """Signal handlers can only be set in the main thread: a run in another thread goes without them and says so.
    Runs share the kept model, so a second run while the first is going is refused in one line."""
    started, go, found = threading.Event(), threading.Event(), {}
    write = wpatch.api.pairs_file

    def held(pairs):  # the thread's run, started, waits here until the main thread has tried its own
        started.set()
        go.wait(60)
        return write(pairs)

    def in_thread():
        try:
            found["run"] = python_run(small_model_path, clip_dir, tmp_path / "a")
        except BaseException as error:  # shown by the assertion below
            found["error"] = error

    monkeypatch.setattr(wpatch.api, "pairs_file", held)
    thread = threading.Thread(target=in_thread)
    thread.start()
    assert started.wait(60)
    monkeypatch.setattr(wpatch.api, "pairs_file", write)
    with pytest.raises(WpatchError, match=r"^wpatch.run is already running in this process \(in another thread\)"):
        python_run(small_model_path, clip_dir, tmp_path / "b")
    go.set()
    thread.join(600)
    assert "error" not in found, repr(found.get("error"))
    assert len(found["run"].rows) == 2 * 2 * 2 * 2 * 3 and not (tmp_path / "b").exists()
    assert "wpatch: note: this run is outside the main thread" in capsys.readouterr().err


def test_ctrl_c_raises_run_interrupted_saying_how_to_continue_from_python(
    tmp_path, small_model_path, clip_dir, monkeypatch
):
    monkeypatch.setenv("WPATCH_FAULT", "part1:SIGINT")  # Ctrl-C after the first batch
    out = tmp_path / "a"
    callers = signal.getsignal(signal.SIGINT)  # Python's default, or ignored where the suite runs in the background
    with pytest.raises(wpatch.RunInterrupted) as stopped:
        python_run(small_model_path, clip_dir, out)
    assert isinstance(stopped.value, KeyboardInterrupt) and stopped.value.output_dir == str(out)
    assert str(stopped.value) == (
        f"stopped by SIGINT; every finished batch is kept; continue with wpatch.run(...) with the same arguments, "
        f"output_dir='{out}' and resume=True"
    )
    assert signal.getsignal(signal.SIGINT) is callers  # the caller's handler is back
    monkeypatch.delenv("WPATCH_FAULT")
    assert len(python_run(small_model_path, clip_dir, out, resume=True).rows) == 2 * 2 * 2 * 2 * 3


def test_a_dataframe_of_pairs_is_named_as_given(tmp_path, small_model_path):
    with pytest.raises(WpatchError, match=r"^the DataFrame given as pairs lacks column 'word_b'; give it columns"):
        wpatch.run(PAIRS.drop(columns="word_b"), model=small_model_path, output_dir=tmp_path / "x")
    with pytest.raises(
        WpatchError, match=r"^the DataFrame given as pairs \(written to .*\.csv\) line 3: empty word_a; fill it in"
    ):
        wpatch.run(PAIRS.assign(word_a=["bat", ""]), model=small_model_path, output_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()
