"""The `wpatch` command: `wpatch predict` (run an experiment), `wpatch report RUN_DIR` (the analysis and figures
again from a saved predictions.csv), `wpatch compare RUN_A RUN_B` (cell-by-cell differences with intervals),
`wpatch merge SHARD_RUN... --out RUN` (the runs of a run's shards made into the whole run, `wpatch.run_folder.merge`),
`wpatch screen` (which clips a model hears), `wpatch stimuli CORPUS_DIR` (a pairs file from a speech corpus) and
`wpatch benchmark` (the speed of the patching modes, `wpatch.benchmark`).
`python -m wpatch` is the same command.

`wpatch predict` takes every setting as a LightningCLI option (`wpatch predict --help` lists them): `--model.*`
(PatchingModule), `--data.*` (PairDataModule), `--writer.*` (PatchingResultsWriter), `--trainer.*` (only the
options that mean something for patching: accelerator, devices, strategy, precision, progress bar). Bad input
(a `WpatchError`, an option or config file the parser refuses, a Trainer option Lightning refuses) ends with one
line on stderr and exit status 2; any other exception is a bug and shows its traceback. SIGTERM / SIGINT stop the
run before its next batch (exit 143 / 130) with the command that continues it; a second signal stops it at once.
"""

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import lightning as L
import pandas as pd
import torch
import yaml
from jsonargparse import ArgumentError
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI

from datamodules import PairDataModule
from wpatch.analysis.console import closing_lines
from wpatch.atomic import write_atomically
from wpatch.errors import WpatchError
from wpatch.models.loading import check_languages, locate, model_dims, multilingual
from wpatch.models.wav2vec2 import CTCDims, check_words, read_dims
from wpatch.patching.module import PatchingModule, check_precision
from wpatch.predict_help import config_files, explain_options
from wpatch.quiet import quiet_lightning
from wpatch.run_folder.folder import RunStopped, check_writable, code_version
from wpatch.run_folder.plan_block import plan_block
from wpatch.run_folder.progress import ItemProgressBar
from wpatch.run_folder.settings import setting_defaults
from wpatch.run_folder.table import check_table
from wpatch.run_folder.writer import PatchingResultsWriter
from wpatch.run_summary import RunSummary, with_defaults
from wpatch.stimuli.pairs_file import check_word_tokens, pairs_path, read_pairs
from wpatch.stimuli_commands import screen, stimuli


class PatchingCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(PatchingResultsWriter, "writer")
        parser.link_arguments("model.model", "data.model")
        explain_options(parser)

    def parse_arguments(self, parser, args) -> None:
        """With --help, the defaults shown are those of the --config files given before it (the values that run),
        and the help names the files."""
        if args and ("--help" in args or "-h" in args):
            parser.default_config_files = config_files(
                args[: min(args.index(h) for h in ("--help", "-h") if h in args)]
            )
        super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        """Cheap checks of the inputs, before the model loads: precision, pairs file, languages the model knows,
        words that fit its decoder's context, output folder."""
        trainer = self.config.trainer
        on_gpu = trainer.accelerator in ("gpu", "cuda") or (trainer.accelerator == "auto" and torch.cuda.is_available())
        check_precision(trainer.precision, on_gpu)
        data, spec = self.config.data, self.config.model.model
        self.pairs = pairs = read_pairs(data.pairs_file, data.limit)
        dims, path = model_dims(spec), pairs_path(data.pairs_file)
        if isinstance(dims, CTCDims):
            check_words(pairs, read_dims(locate(spec)[1], self.config.model.language), path)
        else:
            check_languages(spec, multilingual(dims), self.config.model.language, pairs, path)
            check_word_tokens(pairs, dims, path, self.config.model.language)
        check_writable(self.config.writer.output_dir)

    def instantiate_classes(self) -> None:
        """The classes, and the pairs table read by the checks handed to the DataModule: the file is read once."""
        super().instantiate_classes()
        self.datamodule.pairs = self.pairs


def starts_the_run(trainer) -> bool:
    """Whether this process starts the run: not one that a DDP launcher (Lightning's, torchrun, SLURM) made for
    rank > 0."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    ranks = [os.environ.get(name, "0") for name in ("LOCAL_RANK", "NODE_RANK", "RANK")]
    return all(rank == "0" for rank in ranks) and (environment is None or environment.global_rank() == 0)


def resume_command(args: list[str], program: list[str] | None = None) -> str:
    """The command line that continues this run: `program` (default: this Python and scripts/predict.py) with the
    same arguments and --writer.resume true."""
    kept, skip = [], False
    for arg in args:
        if skip or arg.startswith("--writer.resume="):
            skip = False
            continue
        skip = arg == "--writer.resume"
        if not skip:
            kept.append(arg)
    program = program or [sys.executable, os.path.relpath(Path(__file__).resolve().parents[1] / "scripts/predict.py")]
    return shlex.join([*program, *kept, "--writer.resume", "true"])


def run_predict(
    args, program: list[str] | None = None, progress: ProgressBar | None = None, go_on: str | None = None
) -> PatchingResultsWriter:
    """Parse `args` (a list of `wpatch predict` options), run the experiment and return its writer; bad input
    raises (`WpatchError`, or the parser's and Lightning's own errors), a signal raises `RunStopped`. `progress`
    replaces the command's progress bar (e.g. a notebook's); `go_on` replaces the command that continues a stopped
    run (`resume_command`) in what the run says (e.g. the Python call)."""
    quiet_lightning()
    writer = None
    trainer_defaults = {"logger": False, "enable_model_summary": False}
    if progress is not None:
        trainer_defaults["callbacks"] = [progress]
    try:
        cli = PatchingCLI(
            PatchingModule,
            PairDataModule,
            run=False,
            args=args,
            trainer_class=patching_trainer,
            auto_configure_optimizers=False,
            save_config_callback=None,
            trainer_defaults=trainer_defaults,
            parser_kwargs={
                "exit_on_error": False,
                "prog": "wpatch predict",
                "description": "Run a patching experiment: every --model.* setting swept over the pairs' items; "
                "the plan is printed first, the results go to --writer.output_dir (see the README's quick start).",
            },
        )
        writer = next(c for c in cli.trainer.callbacks if isinstance(c, PatchingResultsWriter))
        writer.stop.install()
        writer.stop.resume_command = go_on or resume_command(args, program)
        if starts_the_run(cli.trainer):
            writer.claim(cli.trainer, cli.model, cli.datamodule)
            write_atomically(writer.output_dir / "config.yaml", cli.parser.dump(cli.config, skip_none=False))
            if writer.verbose:
                print(plan_block(cli.trainer, cli.model, cli.datamodule, writer.output_dir), flush=True)
        cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
        writer.is_global_zero = cli.trainer.is_global_zero
        return writer
    except RunStopped as stop:
        stop.writer, stop.is_global_zero = writer, cli.trainer.is_global_zero
        raise
    finally:
        if writer is not None:
            writer.stop.restore()


def predict(args=None, program: list[str] | None = None) -> None:
    """`wpatch predict`: run a patching experiment (see the module docstring)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = sys.argv[1:] if args is None else args
    try:
        writer = run_predict(args, program)
        if writer.closing and writer.verbose and writer.is_global_zero:
            print(writer.closing, flush=True)
    except (WpatchError, MisconfigurationException, ArgumentError) as error:
        print(f"wpatch: error: {one_line(error, args)}", file=sys.stderr)
        sys.exit(2)
    except RunStopped as stop:
        if not stop.is_global_zero:
            sys.exit(0)  # a DDP rank > 0: a non-zero exit would make Lightning's process observer kill rank 0
        for child in stop.writer.stop.children:
            child.kill()
        print(
            f"wpatch: {stop}; every finished batch is kept; continue with: {stop.writer.stop.resume_command}",
            file=sys.stderr,
        )
        sys.exit(128 + stop.signum)


def one_line(error: Exception, args: list[str]) -> str:
    """What a bad input's error says, on one line (a parser error names the option and why, and points at
    --help; a config file that is not YAML says where)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not isinstance(error, ArgumentError):
        return lines[0]
    # jsonargparse splits "which option" and "why" over two lines
    if str(error).startswith("Problems parsing config"):
        return config_file_problem(args) or " ".join(lines[:2]) + "; see --help"
    return " ".join(lines[:2]) + "; see --help"


def config_file_problem(args: list[str]) -> str | None:
    """Where the first `--config` file that is not valid YAML goes wrong (file, line, column, what), or None
    (jsonargparse says only "Problems parsing config" and a line, without the file)."""
    for name in config_files(args):
        try:
            yaml.compose(Path(name).read_text())
        except OSError:
            continue  # the parser names a missing file itself
        except yaml.MarkedYAMLError as error:
            mark, where = error.problem_mark or error.context_mark, ""
            if error.context and error.context_mark and error.problem_mark:
                where = f" ({error.context} started on line {error.context_mark.line + 1})"
            what = error.problem or error.context
            return (
                f"config file {name} line {mark.line + 1}, column {mark.column + 1}: {what}{where}; fix the YAML there"
            )
    return None


def patching_trainer(
    accelerator: str = "auto",
    devices: list[int] | str | int = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    precision: str = "32-true",
    enable_progress_bar: bool = True,
    callbacks: list[L.Callback] | None = None,
    logger: bool = False,
    enable_model_summary: bool = False,
) -> L.Trainer:
    """The Trainer with only the options a patching run uses (no epochs, clipping or optimisers); fp32 unless
    asked (`--trainer.precision`); progress in items and rows (`wpatch.run_folder.progress.ItemProgressBar`). Under
    SLURM (srun), Lightning's auto-requeue is off: it would save a training checkpoint and requeue on SIGUSR1;
    a run continues instead by starting it again with --writer.resume true (docs/clusters.md)."""
    callbacks = list(callbacks or [])
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None
    if enable_progress_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(ItemProgressBar())
    try:
        return L.Trainer(
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            num_nodes=num_nodes,
            precision=precision,
            enable_progress_bar=enable_progress_bar,
            callbacks=callbacks,
            logger=logger,
            enable_model_summary=enable_model_summary,
            plugins=plugins,
        )
    except ValueError as error:  # Lightning refuses an option's value (a strategy or accelerator name, num_nodes)
        raise WpatchError(str(error)) from error


def report(run_dir: str, allow_edited: bool = False) -> tuple[pd.DataFrame, dict]:
    """`wpatch report RUN_DIR`: the analysis and figures again from a finished run's predictions.csv, checked against
    what the run wrote (`wpatch.run_folder.table`; an edited table only with `allow_edited`, and then the summary and
    report say so), the settings and everything the run recorded kept from its summary.json, with `reanalysed` (code
    version, time) added; returns the rows and the summary. A folder that is not a finished run (no summary.json) is
    refused: its run or merge finishes it."""
    from wpatch.analysis.summary import analyse
    from wpatch.analysis.tables import not_a_run, read_rows_and_summary

    folder = Path(run_dir)
    if not (folder / "summary.json").is_file():
        raise WpatchError(not_a_run(folder))
    edited = check_table(folder, allow_edited)
    old = RunSummary.read(folder / "summary.json")
    if old.settings:  # a run's (not a table analysed on its own): every setting, a newer one at its default
        defaults = setting_defaults(PatchingModule, PairDataModule)
        old.settings, note = with_defaults(old.settings, defaults, folder / "summary.json")
        if note:
            print(note, file=sys.stderr)
    old.recorded.reanalysed = {"code_version": code_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    rows = read_rows_and_summary(folder)[0]
    return rows, analyse(rows, folder, old.settings, old.recorded, edited=edited)


def analyse_again(command: str, rest: list[str], allow_edited: bool = False) -> None:
    """`wpatch report RUN_DIR` or `wpatch compare RUN_A RUN_B [RUN ...] [--out FILE]` (the arguments checked), each
    table checked against what its run wrote (an edited one only with `allow_edited`)."""
    if command == "report":
        print(closing_lines(*report(rest[0], allow_edited), rest[0]))
        return
    from wpatch.analysis import compare_runs, depth_figure, depth_profiles
    from wpatch.analysis.compare import (
        compare_header,
        difference_figure,
        narrow_table,
        narrow_text,
        shown_measure,
    )
    from wpatch.analysis.depth import run_model
    from wpatch.analysis.figures import save_figure

    runs, out = (rest[:-2], rest[-1]) if "--out" in rest else (rest, None)
    for run in runs:
        if edited := check_table(run, allow_edited):
            print(f"wpatch: note: compared as edited (--allow-edited): {edited}", file=sys.stderr)
    models = [run_model(run) for run in runs]
    depths = [" + ".join(f"{d} {stack}" for stack, d in depth.items()) for depth, _ in models]
    if len(runs) == 2 and models[0][0] == models[1][0]:
        table = compare_runs(runs[0], runs[1])
        measure = shown_measure(table)
        print(compare_header(runs[0], runs[1], table, measure))
        for difference in table.attrs.get("differences", []):
            print(f"wpatch: note: the runs differ in {difference}", file=sys.stderr)
        figure_path = Path(out).with_suffix(".png") if out else Path("compare.png")
        save_figure(difference_figure(table, measure=measure), figure_path)
        shown = narrow_text(narrow_table(table, measure))
        every = f"in {Path(out).resolve()}" if out else "with --out FILE.csv"
        shown += (
            f"\n\nfigure: {figure_path.resolve()} ({measure} B-A per layer cell)\nevery measure's A, B, B-A: {every}"
        )
    else:
        table = depth_profiles(runs)
        for label, run, (_, line) in zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", runs, models):
            print(f"wpatch: note: run {label} ({run}) patched {line}", file=sys.stderr)
        why = f"the models differ in depth ({' and '.join(depths)} blocks)" if len(set(depths)) > 1 else None
        print(
            f"wpatch: note: {why or f'{len(runs)} runs'}: each run is placed on relative depth, layer / (depth - 1), "
            "as diagonal and off-diagonal profiles of the effect with 95% intervals over pairs",
            file=sys.stderr,
        )
        figure_path = Path(out).with_suffix(".png") if out else Path("relative_depth.png")
        save_figure(depth_figure(table), figure_path)
        print(f"wpatch: note: figure {figure_path.resolve()}", file=sys.stderr)
        shown = table.to_string(index=False, float_format=lambda x: f"{x:.3f}")
    if out:
        try:
            table.to_csv(out, index=False)
        except OSError as error:
            raise WpatchError(f"cannot write {out} ({error.strerror}); choose another --out") from None
    print(shown)


def merge_shards(args: list[str]) -> None:
    """`wpatch merge SHARD_RUN... --out RUN` (see `wpatch.run_folder.merge`)."""
    from wpatch.run_folder.merge import merge

    parser = argparse.ArgumentParser(prog="wpatch merge", description="The runs of a run's shards as the whole run.")
    parser.add_argument("shards", nargs="+", help="the finished run folders of shards 0/N .. N-1/N, in any order")
    parser.add_argument("--out", required=True, help="the merged run's folder (new or empty, or its own to finish)")
    parser.add_argument("--allow-edited", action="store_true", help="merge shards whose tables were edited (say so)")
    options = parser.parse_args(args)
    try:
        summary = merge(options.shards, options.out, options.allow_edited)
    except WpatchError as error:
        print(f"wpatch: error: {error}", file=sys.stderr)
        sys.exit(2)
    items = summary["groups"]["all"]["items"]
    print(f"{len(options.shards)} shards merged: {items} items; tables, figures and report.md in:")
    print(Path(options.out).resolve())


def main(argv: list[str] | None = None) -> None:
    """The `wpatch` console command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    usage = (
        "usage: wpatch {predict,report,compare,merge,screen,stimuli,benchmark} ...\n"
        "  predict [--config FILE] [--model.* --data.* --writer.* --trainer.*]  run an experiment\n"
        "  report RUN_DIR                 analysis, figures and summary again from RUN_DIR/predictions.csv\n"
        "  compare RUN_A RUN_B [RUN ...] [--out F]  cell-by-cell differences of two runs, with 95% intervals; runs\n"
        "                                 of different depth (or more than two) on relative depth, with a figure\n"
        "  merge SHARD_RUN... --out RUN   the finished runs of a run's shards (--data.shard I/N) as the whole run\n"
        "  (report, compare, merge: --allow-edited analyses a predictions.csv edited since its run wrote it)\n"
        "  screen ...                     which clean clips the model recognises (--help lists its options)\n"
        "  stimuli CORPUS_DIR --out F     a pairs file from a corpus folder or aligned recordings (--help)\n"
        "  benchmark ...                  speed of the patching modes (--help lists its options)"
    )
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return
    command, rest = argv[0], argv[1:]
    allow_edited = command in ("report", "compare") and "--allow-edited" in rest
    if allow_edited:
        rest = [arg for arg in rest if arg != "--allow-edited"]
    if command == "predict":
        predict(rest, ["wpatch", "predict"])
    elif (command == "report" and len(rest) == 1) or (command == "compare" and len(rest) >= 2):
        runs = rest[:-2] if command == "compare" and "--out" in rest else rest
        if len(runs) < (1 if command == "report" else 2) or any(arg.startswith("-") for arg in runs):
            print(usage, file=sys.stderr)
            sys.exit(2)
        try:
            analyse_again(command, rest, allow_edited)
        except WpatchError as error:
            print(f"wpatch: error: {error}", file=sys.stderr)
            sys.exit(2)
    elif command == "merge":
        merge_shards(rest)
    elif command == "screen":
        screen(rest)
    elif command == "stimuli":
        stimuli(rest)
    elif command == "benchmark":
        from wpatch.benchmark import main as benchmark

        benchmark(rest)
    else:
        print(usage, file=sys.stderr)
        sys.exit(2)
