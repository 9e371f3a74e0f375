"""Lightning's own console lines that say nothing about a patching run, silenced (`wpatch predict`, `wpatch
benchmark` and the scripts call `quiet_lightning` first)."""

import logging
import warnings


def quiet_lightning() -> None:
    """Silence what Lightning says that is not ours: seed lines, GPU/TPU lines, tips, its _pytree deprecation."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|Total length of .* is zero).*")
    warnings.filterwarnings("ignore", message=r".*(No seed found|LightningCLI's args parameter).*")
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.seed",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
