"""A run in TensorBoard: the main heatmaps and the summary scalars, with the run's settings as hparams. The event
file is written in a staging folder and moved into `tensorboard/` in place of any earlier one (`RunBoard`), so a
run's folder holds one event file however often its report was made.
"""

import os
import shutil
from pathlib import Path

from matplotlib.figure import Figure

from wpatch.faults import fault_point


def publish_events(staging: Path, folder: Path) -> None:
    """Move the closed TensorBoard event file(s) in `staging` into `folder`, in place of those there (an earlier
    attempt's, complete or cut short), so a run's `tensorboard/` holds one file however often its report was made."""
    folder.mkdir(exist_ok=True)
    for old in folder.glob("events.out.tfevents.*"):
        old.unlink()
    for new in sorted(staging.iterdir()):
        os.replace(new, folder / new.name)
    staging.rmdir()


class RunBoard:
    """The run's TensorBoard event file: figures as they are made, then the settings and the overall means on
    `close`, which publishes the file into `<output_dir>/tensorboard/`."""

    def __init__(self, output_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.staging = output_dir / f".tensorboard.{os.getpid()}.partial"  # the event file is written here, then moved
        self.folder = output_dir / "tensorboard"
        shutil.rmtree(self.staging, ignore_errors=True)
        self.writer = SummaryWriter(self.staging)

    def add_figure(self, tag: str, figure: Figure) -> None:
        self.writer.add_figure(tag, figure)

    def close(self, settings: dict, groups: dict, measures: list[str]) -> None:
        """Write the settings as hparams and each measure's overall diagonal / off-diagonal means as scalars,
        close the file and publish it."""
        from torch.utils.tensorboard.summary import hparams

        overall = groups.get("all", {})
        metrics = {
            f"hparam/{m}_{k}": overall[m][k]
            for m in measures
            if m in overall
            for k in ("diagonal_mean", "off_diagonal_mean")
            if overall[m][k] is not None
        }
        flat = {
            k: str(v).lower()
            if isinstance(v, bool)
            else str(v)
            if isinstance(v, (list, dict, tuple)) or v is None
            else v
            for k, v in settings.items()
            if k != "hparams"
        }  # booleans as true/false, not 1.0000
        for event in hparams(flat, metrics):
            self.writer.file_writer.add_summary(event)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value)
        fault_point("tensorboard")
        self.writer.close()
        publish_events(self.staging, self.folder)
