"""Run a patching experiment: `python scripts/predict.py --config configs/experiment_a.yaml [--data.limit 10 ...]`.

Every setting is a LightningCLI option (`--help` lists them): `--model.*` (PatchingModule), `--data.*`
(PairDataModule), `--writer.*` (PatchingResultsWriter), `--trainer.*` (accelerator, devices, strategy,
precision). Bad input ends with one line on stderr and exit status 2. SIGTERM / SIGINT stop the run before
its next batch (exit 143 / 130) with the command that continues it; a second signal stops it at once.
"""

from wpatch.cli import predict as main  # `python scripts/predict.py ...` is `wpatch predict ...`

if __name__ == "__main__":
    main()
