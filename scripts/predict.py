"""Run a patching experiment: `python scripts/predict.py --config configs/experiment_a.yaml [--data.limit 10 ...]`.

Every setting is a LightningCLI option (`--help` lists them): `--model.*` (PatchingModule), `--data.*`
(PairDataModule), `--writer.*` (PatchingResultsWriter), `--trainer.*` (accelerator, devices, strategy,
precision). Bad input ends with one line on stderr and exit status 2.
"""

import logging
import sys

import torch

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI

from datamodules import PairDataModule
from wpatch.errors import WpatchError
from wpatch.module import PatchingModule, check_precision
from wpatch.writer import PatchingResultsWriter


class PatchingCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(PatchingResultsWriter, "writer")
        parser.link_arguments("model.model", "data.model")

    def before_instantiate_classes(self) -> None:
        trainer = self.config.trainer
        on_gpu = trainer.accelerator in ("gpu", "cuda") or (trainer.accelerator == "auto" and torch.cuda.is_available())
        check_precision(trainer.precision, on_gpu)


def main(args=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cli = PatchingCLI(
            PatchingModule,
            PairDataModule,
            run=False,
            args=args,
            save_config_callback=None,
            trainer_defaults={"logger": False, "enable_model_summary": False},
        )
        cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    except (WpatchError, MisconfigurationException, ValueError) as error:
        print(f"wpatch: error: {str(error).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
