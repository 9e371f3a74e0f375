"""wpatch from Python: `run(...)` (an experiment from keyword arguments, with the same Trainer and run folder as
`wpatch predict`), `load_run(folder)` and the `Run` both return.

`run` turns its keyword arguments into `wpatch predict` options and hands them to the command's own parser
(`wpatch.cli.run_predict`), so a setting means the same in both and the run folder's config.yaml is the command's.
In a notebook the progress bar is a notebook bar, Lightning says nothing, and the model is loaded once per process
(`wpatch.models.loading.keep_models`).
"""

import gc
import hashlib
import inspect
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from wpatch.errors import RunInterrupted, WpatchError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# run()'s own names for options whose `wpatch predict` name differs
RENAMED = {"pairs": "pairs_file"}
GIVEN_PAIRS = "the DataFrame given as pairs"
ONE_RUN = threading.Lock()  # held by the run in progress: runs share the kept model, so one runs at a time
# options a run from Python leaves to the command (Lightning's plumbing, set by the command itself)
NOT_OPTIONS = {"callbacks", "logger", "enable_model_summary", "self", "args", "kwargs"}


def option_names() -> dict[str, str]:
    """Every `wpatch predict` option by its short name: name -> `group.name` (model, data, writer, trainer); a name
    both the module and the data have (`model`) is the module's (the command links it to the data)."""
    from datamodules import PairDataModule
    from wpatch.cli import patching_trainer
    from wpatch.patching.module import PatchingModule
    from wpatch.run_folder.writer import PatchingResultsWriter

    names = {}
    for group, target in (
        ("trainer", patching_trainer),
        ("writer", PatchingResultsWriter),
        ("data", PairDataModule),
        ("model", PatchingModule),
    ):
        for name in inspect.signature(target).parameters:
            if name not in NOT_OPTIONS:
                names[name] = f"{group}.{name}"
    return names


def option_value(value) -> str:
    """A keyword argument's value as the command line gives it (the parser reads YAML, so JSON is understood)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)


def pairs_file(pairs) -> str:
    """A pairs file name for `pairs`: a packaged set's name or a CSV path as given; a DataFrame (refused without
    the columns a pairs file needs) written once to the cache (`<cache>/pairs/<sha256>.csv`), so the run's
    config.yaml names a file that holds it."""
    if not isinstance(pairs, pd.DataFrame):
        return str(pairs)
    from wpatch.atomic import write_atomically
    from wpatch.models.loading import cache_root
    from wpatch.stimuli.pairs_file import REQUIRED

    missing = [column for column in REQUIRED if column not in pairs.columns]
    if missing:
        raise WpatchError(
            f"{GIVEN_PAIRS} lacks column {missing[0]!r}; give it columns word_a and word_b (and any other column of a "
            "pairs file, docs/stimuli.md)"
        )
    text = pairs.to_csv(index=False)
    path = cache_root() / "pairs" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.csv"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, text)
    return str(path)


def new_folder(root: str = "runs") -> str:
    """A run folder that does not exist yet: runs/run-YYYYmmdd-HHMMSS (with -2, -3 ... when taken)."""
    base = Path(root) / time.strftime("run-%Y%m%d-%H%M%S")
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return str(folder)


def notebook_bar():
    """tqdm's notebook bar when this process is a Jupyter kernel with ipywidgets installed, else None (the
    command's text bar)."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    if type(shell).__name__ != "ZMQInteractiveShell":
        return None
    try:
        import ipywidgets  # noqa: F401 (tqdm's notebook bar draws with it)
    except ImportError:
        return None
    from tqdm.notebook import tqdm

    return tqdm


def options_as_arguments(config: str | None = None, **options) -> list[str]:
    """The `wpatch predict` arguments for `run`'s keyword arguments (None = the option's default); an unknown
    name is refused with the known ones."""
    names = option_names()
    args = ["--config", str(config)] if config else []
    for name, value in options.items():
        name = RENAMED.get(name, name)
        if name not in names:
            known = ", ".join(sorted({*names, *RENAMED} - set(RENAMED.values())))
            raise WpatchError(f"wpatch.run has no option {name!r}; the options are: {known}")
        if value is not None:
            args += [f"--{names[name]}", option_value(value)]
    return args


def run(
    pairs="starter",
    *,
    model: str | None = None,
    sites: list[str] | None = None,
    source_layers: list[int] | None = None,
    target_layers: list[int] | None = None,
    windows: list | None = None,
    alphas: list[float] | None = None,
    tts: str | list[str] | None = None,
    limit: int | None = None,
    output_dir: str | Path | None = None,
    config: str | Path | None = None,
    progress: bool = True,
    **options,
) -> "Run":
    """Run a patching experiment and return it as a `Run` (`wpatch predict` with these settings).

    `pairs`: a DataFrame (columns as in a pairs file), a CSV path or a packaged set (starter, english, ...);
    `output_dir`: default a new folder under runs/; `config`: a config file read first (e.g.
    configs/experiment_a.yaml), the keyword arguments on top. Every other `wpatch predict` option is a keyword by
    its last name (`batch_size=4`, `control=True`, `accelerator="gpu"`, `precision="bf16-mixed"`, `resume=True`);
    None keeps an option's default. Bad input raises `WpatchError` with the command's one line; nothing is
    printed but the progress bar and wpatch's own notes. Ctrl-C (or SIGTERM) stops the run before its next batch
    and raises `RunInterrupted`, which says how to continue it. One run at a time per process: a call while
    another thread's run is going is refused (`WpatchError`)."""
    given = dict(
        model=model,
        sites=sites,
        source_layers=source_layers,
        target_layers=target_layers,
        windows=windows,
        alphas=alphas,
        tts=tts,
        limit=limit,
        output_dir=str(output_dir) if output_dir is not None else new_folder(),
    )
    if not ONE_RUN.acquire(blocking=False):
        raise WpatchError(
            "wpatch.run is already running in this process (in another thread), and runs share the kept model; "
            "wait for it to return, or start this one in another process"
        )
    try:
        return _run(pairs, config, progress, given, options)
    finally:
        ONE_RUN.release()


def _run(pairs, config, progress: bool, given: dict, options: dict) -> "Run":
    """`run` with its named options in `given` (`output_dir` chosen), holding the one-run lock. What it says
    names the pairs as the DataFrame given (not the file it is written to) and continues with a Python call."""
    from jsonargparse import ArgumentError
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from wpatch.cli import one_line, run_predict
    from wpatch.models.loading import keep_models
    from wpatch.run_folder.folder import RunStopped
    from wpatch.run_folder.progress import ItemProgressBar

    path = pairs_file(pairs)
    args = options_as_arguments(config, pairs=path, **given, **options)
    if "verbose" not in options:
        args += ["--writer.verbose", "false"]
    if not progress:
        args += ["--trainer.enable_progress_bar", "false"]
    bar = ItemProgressBar(notebook_bar()) if progress and notebook_bar() else None
    go_on = f"wpatch.run(...) with the same arguments, output_dir={given['output_dir']!r} and resume=True"
    try:
        with keep_models():
            writer = run_predict(args, progress=bar, go_on=go_on)
    except (MisconfigurationException, ArgumentError) as error:
        raise WpatchError(one_line(error, args)) from None
    except WpatchError as error:
        if not isinstance(pairs, pd.DataFrame):
            raise
        raise WpatchError(str(error).replace(f"pairs file {path}", f"{GIVEN_PAIRS} (written to {path})")) from None
    except RunStopped as stop:
        for child in stop.writer.stop.children:  # DDP processes this one launched
            child.kill()
        raise RunInterrupted(
            f"{stop}; every finished batch is kept; continue with {go_on}", stop.signum, given["output_dir"]
        ) from None
    finally:
        gc.collect()  # the Trainer, module and data of this run: memory stays flat over many runs
    return load_run(writer.output_dir)


def table_or_empty(path: Path) -> pd.DataFrame:
    """A run's CSV table, or an empty one when the run has none (an unfinished run)."""
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


@dataclass
class Run:
    """A run read back: `rows` (predictions.csv), `summary` (summary.json), `matrices` (matrices.csv: group,
    measure, s, t, mean, low, high, n), `cells` (cells.csv), its `path`, and `edited` (what differs from the table
    the run wrote, when it was loaded with `allow_edited=True`; else None). `rows, summary = run` still works."""

    path: Path
    rows: pd.DataFrame = field(repr=False)
    summary: dict = field(repr=False)
    matrices: pd.DataFrame = field(repr=False)
    cells: pd.DataFrame = field(repr=False)
    edited: str | None = None

    def __iter__(self):
        """The older `(rows, summary)` form of `load_run`."""
        return iter((self.rows, self.summary))

    def plot(self, measure: str = "score", group: str = "all") -> "Figure":
        """One layer matrix as a heatmap (a matplotlib Figure, shown inline in a notebook)."""
        from wpatch.analysis.figures import plot_matrix

        return plot_matrix(self.path, measure, group=group)

    def compare(self, other, group: str = "all") -> pd.DataFrame:
        """Cell-by-cell differences (other - this) with 95% intervals (`wpatch.analysis.compare_runs`); `other`: a
        Run or a run folder. How the runs differ is in the table's `attrs["differences"]`."""
        from wpatch.analysis.compare import compare_runs

        return compare_runs(self.path, other.path if isinstance(other, Run) else other, group=group)

    def report(self) -> Path:
        """report.html written again from the run's files; its path (open it in a browser)."""
        from wpatch.analysis.html import write_report_html

        return write_report_html(self.path, self.rows, self.summary)


def load_run(folder, allow_edited: bool = False) -> Run:
    """A run read back as a `Run`; a folder that holds none is refused (`WpatchError`, saying what it is), and so
    is a predictions.csv edited since the run wrote it (naming the first row that differs), unless `allow_edited`
    (then `Run.edited` says what differs). A run made before its table was recorded loads with a note that it
    cannot be checked."""
    from wpatch.analysis.tables import read_rows_and_summary
    from wpatch.run_folder.table import check_table

    folder = Path(folder)
    edited = check_table(folder, allow_edited, allow="allow_edited=True")
    rows, summary = read_rows_and_summary(folder)
    return Run(
        folder, rows, summary, table_or_empty(folder / "matrices.csv"), table_or_empty(folder / "cells.csv"), edited
    )
