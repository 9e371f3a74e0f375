"""Run a patching experiment: `python scripts/predict.py --config configs/experiment_a.yaml [--data.limit 10 ...]`.

Every setting is a LightningCLI option (`--help` lists them): `--model.*` (PatchingModule), `--data.*`
(PairDataModule), `--writer.*` (PatchingResultsWriter), `--trainer.*` (accelerator, devices, strategy,
precision). Bad input ends with one line on stderr and exit status 2. SIGTERM / SIGINT stop the run before
its next batch (exit 143 / 130) with the command that continues it; a second signal stops it at once.
"""

import logging
import os
import shlex
import sys
from pathlib import Path

import torch
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI

from datamodules import PairDataModule
from wpatch.errors import WpatchError
from wpatch.module import PatchingModule, check_precision
from wpatch.pairs import read_pairs
from wpatch.runfolder import RunStopped, check_writable
from wpatch.writer import PatchingResultsWriter


class PatchingCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(PatchingResultsWriter, "writer")
        parser.link_arguments("model.model", "data.model")

    def before_instantiate_classes(self) -> None:
        """Cheap checks of the inputs, before the model loads: precision, pairs file, output folder."""
        trainer = self.config.trainer
        on_gpu = trainer.accelerator in ("gpu", "cuda") or (trainer.accelerator == "auto" and torch.cuda.is_available())
        check_precision(trainer.precision, on_gpu)
        read_pairs(self.config.data.pairs_file, self.config.data.limit)
        check_writable(Path(self.config.writer.output_dir))


def starts_the_run(trainer) -> bool:
    """Whether this process starts the run: not one that a DDP launcher (Lightning's, torchrun, SLURM) made for rank > 0."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    ranks = [os.environ.get(name, "0") for name in ("LOCAL_RANK", "NODE_RANK", "RANK")]
    return all(rank == "0" for rank in ranks) and (environment is None or environment.global_rank() == 0)


def resume_command(args: list[str]) -> str:
    """The command line that continues this run: the same arguments with --writer.resume true."""
    kept, skip = [], False
    for arg in args:
        if skip or arg.startswith("--writer.resume="):
            skip = False
            continue
        skip = arg == "--writer.resume"
        if not skip:
            kept.append(arg)
    return shlex.join([sys.executable, os.path.relpath(__file__), *kept, "--writer.resume", "true"])


def main(args=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    writer = None
    try:
        cli = PatchingCLI(
            PatchingModule,
            PairDataModule,
            run=False,
            args=args,
            save_config_callback=None,
            trainer_defaults={"logger": False, "enable_model_summary": False},
            parser_kwargs={"exit_on_error": False},
        )
        writer = next(c for c in cli.trainer.callbacks if isinstance(c, PatchingResultsWriter))
        writer.stop.install()
        writer.stop.resume_command = resume_command(sys.argv[1:] if args is None else args)
        if starts_the_run(cli.trainer):
            writer.claim(cli.trainer, cli.model, cli.datamodule)
        cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    except (WpatchError, MisconfigurationException, ValueError, ArgumentError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        # jsonargparse splits "which option" and "why" over two lines
        message = " ".join(lines[:2]) + "; see --help" if isinstance(error, ArgumentError) else lines[0]
        print(f"wpatch: error: {message}", file=sys.stderr)
        sys.exit(2)
    except RunStopped as stop:
        if not cli.trainer.is_global_zero:
            sys.exit(0)  # a DDP rank > 0: a non-zero exit would make Lightning's process observer kill rank 0
        for child in writer.stop.children:
            child.kill()
        print(f"wpatch: {stop}; every finished batch is kept; continue with: {writer.stop.resume_command}", file=sys.stderr)
        sys.exit(128 + stop.signum)
    finally:
        if writer is not None:
            writer.stop.restore()


if __name__ == "__main__":
    main()
