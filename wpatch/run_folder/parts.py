"""A run's parts: the rows of each batch, `parts/items-<first item>.csv`, each followed by its record
`parts/items-<first item>.json` (rows, bytes, sha256, item ids; when its session started and when it was
written). Both are written atomically, the record after the part, so a part without its record was cut off before
it was complete. Only a part that matches its record counts as done.
"""

import hashlib
import json
import sys
import time
from pathlib import Path

import pandas as pd

from wpatch.atomic import write_atomically


def warn(message: str) -> None:
    print(f"wpatch: warning: {message}", file=sys.stderr, flush=True)


def part_record(part: Path) -> Path:
    """Where the record of a part (`parts/items-<first item>.csv`) is kept."""
    return part.with_suffix(".json")


def write_part(part: Path, frame: pd.DataFrame, session_started: float | None = None) -> None:
    """Write a part, then its record, each atomically."""
    data = frame.to_csv(index=False).encode("utf-8")
    write_atomically(part, data)
    record = {
        "rows": len(frame),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "items": sorted(int(i) for i in frame["item_id"].unique()),
        "session_started": session_started,
        "written": time.time(),
    }
    write_atomically(part_record(part), json.dumps(record) + "\n")


def part_problem(part: Path) -> tuple[dict | None, str | None]:
    """A part's record, and what is wrong with the part (None when its bytes are the ones recorded)."""
    try:
        record = json.loads(part_record(part).read_text())
        recorded, size, _, _ = record["sha256"], record["bytes"], record["rows"], record["items"]
    except FileNotFoundError:
        return None, "has no record (the run stopped before the part was complete)"
    except (ValueError, KeyError, TypeError):
        return None, "has an unreadable record"
    data = part.read_bytes()
    if len(data) != size:
        return record, f"is {len(data)} bytes, not the {size} its record says (cut short or damaged)"
    if hashlib.sha256(data).hexdigest() != recorded:
        return record, "does not match the sha256 its record says (damaged)"
    return record, None


def verified_parts(folder: Path, repair: bool = False) -> dict[Path, dict]:
    """The parts in `folder` whose bytes are the ones their records say, with their records. With `repair` (rank
    0, before any work), every other part (cut short, damaged, without a record) and every record without its
    part is deleted, with a warning that names it, so that its items are computed again."""
    if not folder.is_dir():
        return {}
    verified = {}
    for part in sorted(folder.glob("items-*.csv")):
        record, problem = part_problem(part)
        if problem is None:
            verified[part] = record
        elif repair:
            warn(f"part {part} {problem}; computing its items again")
            part_record(part).unlink(missing_ok=True)
            part.unlink()
    for record in sorted(folder.glob("items-*.json")) if repair else []:
        if not record.with_suffix(".csv").exists():
            warn(f"part {record.with_suffix('.csv')} is missing (its record is there); computing its items again")
            record.unlink()
    return verified


def finished_items(folder: Path) -> set[int]:
    """Item ids already written, by earlier or current processes, in parts that match their records."""
    return {int(i) for record in verified_parts(folder).values() for i in record["items"]}
