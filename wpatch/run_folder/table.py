"""What a run wrote into predictions.csv, and the check of the table against it.

The run (and `wpatch merge`) writes `predictions.json` right after the table: its rows, bytes and sha256, and a
digest of each CSV record (the header first: blake2b of its fields, 8 bytes). Whatever reads a run's table back to
analyse it (`wpatch report`, `wpatch compare`, `wpatch merge`, `wpatch.load_run`) checks it first: the same sha256
is the same table (one pass over the file); otherwise the digests find the first row that differs, and the edited
table is refused unless the user allows it (`--allow-edited`, `allow_edited=True`), when the analysis says so. A
table merged from edited shards keeps that in its record (`edited`). A run made before the record was kept cannot
be checked: it is read with a note saying so.
"""

import csv
import hashlib
import io
import json
import sys
from pathlib import Path

from wpatch.atomic import write_atomically
from wpatch.errors import WpatchError

TABLE = "predictions.csv"
RECORD = "predictions.json"
DIGEST_BYTES = 8


def records(data: bytes) -> list[tuple[str, list[str], int]]:
    """Each CSV record of `data` (the header first): its digest, its fields and the line it starts on."""
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="replace"), newline=""))
    found, line = [], 1
    for fields in reader:
        digest = hashlib.blake2b("\x1f".join(fields).encode(), digest_size=DIGEST_BYTES).hexdigest()
        found.append((digest, fields, line))
        line = reader.line_num + 1
    return found


def record_table(folder: Path, edited: str | None = None) -> None:
    """Write the record of `folder`'s predictions.csv as it is now (`edited`: what was edited in the tables it was
    merged from)."""
    data = (folder / TABLE).read_bytes()
    digests = [digest for digest, _, _ in records(data)]
    record = {
        "rows": len(digests) - 1,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "row_digests": f"blake2b of each CSV record's fields joined by \\x1f, {DIGEST_BYTES} bytes, the header first",
        "digests": "".join(digests),
    }
    if edited:
        record["edited"] = edited
    write_atomically(folder / RECORD, json.dumps(record) + "\n")


def first_difference(path: Path, record: dict) -> str | None:
    """Where the table at `path` first differs from what its record says was written (None: nowhere)."""
    data = path.read_bytes()
    if len(data) == record["bytes"] and hashlib.sha256(data).hexdigest() == record["sha256"]:
        return None
    width = 2 * DIGEST_BYTES
    wrote = [record["digests"][i : i + width] for i in range(0, len(record["digests"]), width)]
    found = records(data)
    n = next((i for i, (a, b) in enumerate(zip(found, wrote)) if a[0] != b), min(len(found), len(wrote)))
    counts = f"the run wrote {len(wrote) - 1} rows, the file has {len(found) - 1}"
    if n == len(found) == len(wrote):
        return None  # the same values, written otherwise (quotes, line ends): the same table to read
    if n == 0:
        return f"{path} header (line 1) differs from what the run wrote"
    if n == len(found) or (n + 1 < len(wrote) and found[n][0] == wrote[n + 1]):
        return f"{path} row {n} is missing ({counts})"
    line = f"line {found[n][2]}"
    if n == len(wrote) or (n + 1 < len(found) and found[n + 1][0] == wrote[n]):
        return f"{path} row {n} ({line}) was not written by the run ({counts})"
    header = found[0][1]
    item = f", item {found[n][1][header.index('item_id')]}" if "item_id" in header[: len(found[n][1])] else ""
    return f"{path} row {n} ({line}{item}) differs from what the run wrote"


def check_table(folder, allow_edited: bool = False, allow: str = "--allow-edited") -> str | None:
    """Check `folder`'s predictions.csv against its record. Unedited: None. Edited (or merged from edited tables):
    refused (`WpatchError` naming the file and the first differing row; `allow` names the way to analyse it all the
    same), or with `allow_edited` what was edited. Without a record (a run made before it was kept): a note on
    stderr that the table cannot be checked, and None."""
    folder = Path(folder)
    path = folder / RECORD
    if not (folder / TABLE).is_file():
        return None  # no table: whatever reads it says what the folder is
    if not path.exists():
        print(
            f"wpatch: note: {folder / TABLE} cannot be checked for edits: the run kept no record of it ({RECORD}; "
            "runs made before it was kept have none)",
            file=sys.stderr,
        )
        return None
    try:
        record = json.loads(path.read_text())
        edited = first_difference(folder / TABLE, record) or record.get("edited")
    except (ValueError, KeyError, TypeError, AttributeError):
        edited = f"{path}, the record of what the run wrote into {TABLE}, is unreadable (damaged)"
    if edited and not allow_edited:
        raise WpatchError(
            f"{edited}; analyse the table the run wrote (restore it), or this one as edited with {allow} (the "
            "summary and report then say so)"
        )
    return edited
