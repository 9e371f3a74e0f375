"""The attribution map's files (`--model.method atp`): each batch's part, `parts/atp-<first item>.csv` with its
per-frame arrays `parts/atp-<first item>.npz`, written before the batch's rows part (whose record marks the batch
done), and their merge into `attributions.csv` and `attributions.npz`.

attributions.npz holds one float32 array (sites, blocks, n_ctx) per "<item_id>/<patch direction>": the estimate
of patching each site of each block on that one frame; `sites` names the sites in order.
"""

import io
from pathlib import Path

import numpy as np
import pandas as pd

from wpatch.atomic import atomic_path, write_atomically
from wpatch.patching.attribution import ENCODER_SITES
from wpatch.patching.attribution_map import AttributionMap
from wpatch.rows import ATTRIBUTION_COLUMNS, ATTRIBUTION_KEY


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def write_attribution_part(parts: Path, first_item: int, found: AttributionMap) -> None:
    """A batch's attribution rows and arrays, each written atomically."""
    frame = pd.DataFrame(found.rows, columns=ATTRIBUTION_COLUMNS)
    write_atomically(parts / f"atp-{first_item:08d}.csv", frame.to_csv(index=False))
    write_atomically(parts / f"atp-{first_item:08d}.npz", npz_bytes(found.frames))


def merge_attributions(parts: Path, output_dir: Path, items: set[int]) -> bool:
    """attributions.csv and attributions.npz from the parts, for the run's `items` (a part left by a batch cut off
    before its rows were written, then redone in other batches, counts once); False where the run has none."""
    files = sorted(parts.glob("atp-*.csv"))
    if not files:
        return False
    rows = pd.concat([pd.read_csv(f, keep_default_na=False, na_values=[""]) for f in files], ignore_index=True)
    rows = rows[rows["item_id"].isin(items)].drop_duplicates(ATTRIBUTION_KEY, keep="last")
    rows = rows.sort_values(["item_id"], kind="stable").reset_index(drop=True)
    write_atomically(output_dir / "attributions.csv", rows.to_csv(index=False))
    arrays = {"sites": np.array(ENCODER_SITES)}
    for f in files:
        with np.load(f.with_suffix(".npz")) as part:
            arrays.update({key: part[key] for key in part.files if int(key.split("/")[0]) in items})
    with atomic_path(output_dir / "attributions.npz") as partial:
        partial.write_bytes(npz_bytes(dict(sorted(arrays.items()))))
    return True
