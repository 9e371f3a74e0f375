"""The attribution map's files (`--model.method atp`): each batch's part, `parts/atp-<first item>.csv` with its
per-frame arrays `parts/atp-<first item>.npz`, written before the batch's rows part (whose record marks the batch
done), and their merge into `attributions.csv` and `attributions.npz` (from a run's parts, or from the finished
files of a run's shards for `wpatch merge`).

attributions.npz holds one float32 array (sites, blocks, n_ctx) per "<item_id>/<patch direction>": the estimate
of patching each site of each block on that one frame; `sites` names the sites in order. Its bytes depend only on
the arrays (numpy gives every member of the zip the same fixed time stamp), so equal maps are equal files.
"""

import io
from pathlib import Path

import numpy as np
import pandas as pd

from wpatch.atomic import atomic_path, write_atomically
from wpatch.errors import WpatchError
from wpatch.patching.attribution import ENCODER_SITES
from wpatch.patching.attribution_map import AttributionMap
from wpatch.rows import ATTRIBUTION_COLUMNS, ATTRIBUTION_KEY


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def read_attribution_rows(path: Path, **options) -> pd.DataFrame:
    """The rows of an attribution table (a batch's part or a run's attributions.csv): only empty fields missing."""
    return pd.read_csv(path, keep_default_na=False, na_values=[""], **options)


def write_attribution_part(parts: Path, first_item: int, rows: pd.DataFrame, found: AttributionMap) -> None:
    """A batch's attribution rows (`ATTRIBUTION_COLUMNS`: the map's rows with their items' columns joined) and the
    map's arrays, each written atomically."""
    write_atomically(parts / f"atp-{first_item:08d}.csv", rows[ATTRIBUTION_COLUMNS].to_csv(index=False))
    write_atomically(parts / f"atp-{first_item:08d}.npz", npz_bytes(found.frames))


def write_attributions(rows: pd.DataFrame, arrays: dict[str, np.ndarray], output_dir: Path) -> None:
    """attributions.csv (the rows in item order) and attributions.npz (`sites` and the arrays, by name)."""
    rows = rows.sort_values(["item_id"], kind="stable").reset_index(drop=True)
    write_atomically(output_dir / "attributions.csv", rows.to_csv(index=False))
    with atomic_path(output_dir / "attributions.npz") as partial:
        partial.write_bytes(npz_bytes(dict(sorted(({"sites": np.array(ENCODER_SITES)} | arrays).items()))))


def merge_attributions(parts: Path, output_dir: Path, items: set[int]) -> bool:
    """attributions.csv and attributions.npz from the parts, for the run's `items` (a part left by a batch cut off
    before its rows were written, then redone in other batches, counts once); False where the run has none."""
    files = sorted(parts.glob("atp-*.csv"))
    if not files:
        return False
    rows = pd.concat([read_attribution_rows(f) for f in files], ignore_index=True)
    rows = rows[rows["item_id"].isin(items)].drop_duplicates(ATTRIBUTION_KEY, keep="last")
    arrays = {}
    for f in files:
        with np.load(f.with_suffix(".npz")) as part:
            arrays.update({key: part[key] for key in part.files if int(key.split("/")[0]) in items})
    write_attributions(rows, arrays, output_dir)
    return True


def shard_maps(folders: list[Path]) -> list[Path]:
    """The shards' attributions.csv files (each beside its attributions.npz), [] where the shards have no
    attribution map; one line naming a shard that lacks its map while the others have theirs."""
    tables = [folder / "attributions.csv" for folder in folders]
    if not any(table.is_file() for table in tables):
        return []
    for table in tables:
        for name in (table, table.with_suffix(".npz")):
            if not name.is_file():
                raise WpatchError(
                    f"shard {table.parent} has no {name.name} (the other shards have an attribution map); run that "
                    "shard again into a new folder, then merge"
                )
    return tables


def merge_shard_attributions(tables: list[Path], output_dir: Path) -> None:
    """The whole run's attributions.csv and attributions.npz from its shards' (`shard_maps`; each shard's items its
    own). Each number is read back exactly as the shard wrote it (round trip), so it is written with the same text."""
    rows = pd.concat(
        [read_attribution_rows(table, float_precision="round_trip") for table in tables], ignore_index=True
    )
    arrays = {}
    for table in tables:
        with np.load(table.with_suffix(".npz")) as shard:
            arrays.update({key: shard[key] for key in shard.files if key != "sites"})
    write_attributions(rows, arrays, output_dir)
