"""The predict progress bar: counts items (word pairs in one direction) and result rows, with their rates.

Lightning's own bar counts batches, which says little when one batch holds 8 items x 16 layer pairs and takes a
minute. This one shows e.g. `patching:  40%|####  | 64/162 items [04:10<06:20, 0.26item/s, 2304 rows, 9.2 rows/s]`
on stderr, from rank 0 only (under DDP its total is this rank's share of the items).
"""

import math
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import ProgressBar
from tqdm import tqdm

BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} items [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class ItemProgressBar(ProgressBar):
    """A `ProgressBar` for `Trainer.predict` in items and rows (the Trainer uses it instead of its own)."""

    def __init__(self, bar: type[tqdm] = tqdm):
        """`bar`: the tqdm class that draws it (e.g. `tqdm.notebook.tqdm` in Jupyter)."""
        super().__init__()
        self.enabled, self.bar, self.rows, self.started = True, None, 0, 0.0
        self.bar_class = bar

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pending_items = getattr(trainer.datamodule, "pending_items", None)
        items = pending_items() if pending_items else 0
        self.rows, self.started = 0, time.perf_counter()
        self.bar = self.bar_class(
            total=math.ceil(items / trainer.world_size) or None,
            desc="patching",
            unit="item",
            bar_format=BAR,
            file=sys.stderr,
            dynamic_ncols=True,
            disable=not (self.enabled and trainer.is_global_zero),
        )

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.rows += len(outputs["rows"] if isinstance(outputs, dict) else outputs)  # method atp: rows and map
        rate = self.rows / max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{self.rows} rows, {rate:.1f} rows/s", refresh=False)
        self.bar.update(len(batch["item_id"]))
        if self.bar.total is not None and self.bar.n >= self.bar.total:
            self.bar.close()  # done: the time spent writing the tables is not the patching's

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.bar.close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.bar is not None:
            self.bar.close()  # ends the bar's line, so what the command says next (e.g. why it stopped) has its own
