"""`wpatch merge SHARD_RUN... --out RUN`: the finished runs of a run's shards (`--data.shard I/N`) made into the
whole run, with the same predictions.csv, tables, figures and report as one run of the same settings (and, for
`--model.method atp`, the same attributions.csv, attributions.npz and atp_validation.csv, byte for byte where the
map's passes are the same: see docs/clusters.md).

The shards are checked first, each problem one line naming the shard: every one finished (summary.json), every
one a shard of the same N with every other setting of run.json equal (batch size, devices and other `MAY_CHANGE`
settings may differ: they never change a row), each index 0..N-1 exactly once, no item in two shards, and all of
them together holding every item of the run, and each shard's predictions.csv as the shard wrote it
(`wpatch.run_folder.table`). The merged run's rows are the shards' rows in item order; its summary.json is the
whole run's, with `shard` null and the shards' records combined part by part (`wpatch.run_summary.Recorded.combined`:
`wall_time_s` and `clip_cache` summed, the rest the first shard's); its run.json keeps every shard's sessions and
names the shards (`merged_from`).
The merged run's run.json is written first: a merge stopped midway is started again by the same merge into its
folder (`own_folder`), and until its summary.json is written the folder is no finished run.
"""

import json
import re
import sys
from pathlib import Path

import pandas as pd

from datamodules import PairDataModule
from wpatch.analysis.features import PAIR_FEATURES
from wpatch.analysis.summary import analyse
from wpatch.analysis.tables import read_rows
from wpatch.atomic import atomic_path, write_atomically
from wpatch.errors import WpatchError
from wpatch.patching.module import PatchingModule
from wpatch.run_folder.attributions import merge_shard_attributions, shard_maps
from wpatch.run_folder.folder import LOCK, claim_folder, remove_partials
from wpatch.run_folder.settings import setting_defaults
from wpatch.run_folder.table import check_table, record_table
from wpatch.run_summary import Recorded, RunSummary, with_defaults


def read_shard(folder: Path) -> tuple[dict, RunSummary]:
    """A finished shard's run.json and summary, or one line saying why it is not one."""
    if not (folder / "run.json").is_file():
        raise WpatchError(f"{folder} is not a wpatch run (no run.json); merge takes the run folders of the shards")
    run = json.loads((folder / "run.json").read_text())
    defaults = setting_defaults(PatchingModule, PairDataModule)
    run["settings"], note = with_defaults(run["settings"], defaults, folder / "run.json")
    if note:
        print(note, file=sys.stderr)
    if not (folder / "summary.json").is_file():
        raise WpatchError(
            f"shard {folder} is not finished (no summary.json); continue it with its command and "
            "--writer.resume true, then merge"
        )
    summary = RunSummary.read(folder / "summary.json")
    if not run["settings"].get("shard") or summary.recorded.shard_items is None:
        raise WpatchError(f"{folder} is not a shard (it ran without --data.shard); merge takes the runs of shards")
    return run, summary


def check_shards(folders: list[Path], runs: list[dict], summaries: list[RunSummary]) -> None:
    """Raise (one line naming the shard) unless the shards are all N of one run's: same settings, each index once."""
    first, reference = folders[0], runs[0]["settings"]
    for folder, run in zip(folders[1:], runs[1:]):
        settings = run["settings"]
        for key in dict.fromkeys([*reference, *settings]):
            if key != "shard" and reference.get(key) != settings.get(key):
                raise WpatchError(
                    f"shard {folder} differs from {first} in {key}: {settings.get(key)!r}, not "
                    f"{reference.get(key)!r}; merge only the shards of one run (the same settings)"
                )
    shards = [s.recorded.shard_items for s in summaries]
    count = shards[0]["count"]
    for folder, shard in zip(folders, shards):
        if shard["count"] != count:
            raise WpatchError(
                f"shard {folder} is shard {shard['index']}/{shard['count']}, not one of {count} like {first}; "
                "merge the shards of one split"
            )
    seen = {}
    for folder, shard in zip(folders, shards):
        if shard["index"] in seen:
            raise WpatchError(
                f"shards {seen[shard['index']]} and {folder} are both shard {shard['index']}/{count} (an overlap); "
                "give each shard once"
            )
        seen[shard["index"]] = folder
    missing = [f"{i}/{count}" for i in range(count) if i not in seen]
    if missing:
        raise WpatchError(
            f"shard {missing[0]} is missing (a gap: {len(seen)} of {count} shards given); run it with "
            f"--data.shard {missing[0]} and merge every shard"
        )


def shard_rows(folders: list[Path], summaries: list[RunSummary]) -> pd.DataFrame:
    """Every shard's rows, in item order, checked: no item in two shards, every item of the run in one."""
    frames, owner = [], {}
    for folder in folders:
        # round trip: each number read back is exactly the one the shard wrote, so it is written with the same text
        rows = read_rows(folder / "predictions.csv", float_precision="round_trip")
        for item in rows["item_id"].unique():
            if item in owner:
                raise WpatchError(
                    f"item {item} is in shards {owner[item]} and {folder} (an overlap); merge the shards of one split"
                )
            owner[item] = folder
        frames.append(rows)
    total = summaries[0].recorded.shard_items["items_total"]
    if len(owner) != total:
        raise WpatchError(
            f"the shards hold {len(owner)} items, the run has {total}; each shard must be finished with every "
            "item (wpatch report on a shard lists its items)"
        )
    return pd.concat(frames, ignore_index=True).sort_values("item_id", kind="stable").reset_index(drop=True)


def merged_summary(summaries: list[RunSummary]) -> RunSummary:
    """The whole run's summary before its analysis: the first shard's settings (`shard` null) and the shards'
    records combined (`Recorded.combined`)."""
    settings = dict(summaries[0].settings)
    settings["shard"] = None
    settings["hparams"]["data"]["shard"] = None
    return RunSummary(settings, Recorded.combined([s.recorded for s in summaries]))


def own_folder(output: Path, folders: list[Path]) -> bool:
    """Whether `output` may take the merge of `folders`: it is new, empty (but for a lock), or this merge's own
    unfinished folder (its run.json, written first, names these shards and it has no summary.json yet: the
    merge was stopped and starts again). Any other folder with files is refused."""
    if not output.is_dir() or not any(path.name != LOCK for path in output.iterdir()):
        return True
    try:
        merged_from = json.loads((output / "run.json").read_text())["merged_from"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if sorted(Path(name).resolve() for name in merged_from) != sorted(folder.resolve() for folder in folders):
        return False
    if (output / "summary.json").exists():
        raise WpatchError(
            f"output directory {output} already holds the finished merge of these shards; choose a new or empty "
            "folder for --out"
        )
    return True


def merge(shards: list[str], out: str, allow_edited: bool = False) -> dict:
    """Check the shards' runs (and their tables against what each wrote: an edited one is refused unless
    `allow_edited`) and write the whole run into `out` (a new or empty folder, or this merge's own unfinished
    one, which it starts again); returns its summary."""
    folders = [Path(folder) for folder in shards]
    runs, summaries = zip(*(read_shard(folder) for folder in folders))
    check_shards(folders, list(runs), list(summaries))
    order = sorted(range(len(folders)), key=lambda i: summaries[i].recorded.shard_items["index"])
    folders, runs, summaries = [folders[i] for i in order], [runs[i] for i in order], [summaries[i] for i in order]
    edits = [edit for folder in folders if (edit := check_table(folder, allow_edited))]
    rows = shard_rows(folders, summaries)
    maps = shard_maps(folders)  # an attribution-map run's (`--model.method atp`)
    output = Path(out)
    if not own_folder(output, folders):
        raise WpatchError(f"output directory {output} is not empty; choose a new or empty folder for --out")
    lock = claim_folder(output)
    try:
        remove_partials(output, output / "figures")  # a stopped merge's, started again
        whole = merged_summary(summaries)
        record = {
            "settings": {**runs[0]["settings"], "shard": None},
            "sessions": [session for run in runs for session in run["sessions"]],
            "merged_from": [str(folder) for folder in folders],
        }
        write_atomically(output / "run.json", json.dumps(record, indent=2, default=str) + "\n")  # first: the mark
        config = folders[0] / "config.yaml"
        if config.is_file():
            text = re.sub(r"(?m)^(\s*shard:).*$", r"\1 null", config.read_text(), count=1)
            text = re.sub(r"(?m)^(\s*output_dir:).*$", rf"\1 {json.dumps(str(output))}", text, count=1)
            write_atomically(output / "config.yaml", text)
        with atomic_path(output / "predictions.csv") as partial:
            rows.to_csv(partial, index=False)
        edited = "; ".join(edits) or None
        record_table(output, edited)
        if maps:
            merge_shard_attributions(maps, output)
        features = folders[0] / PAIR_FEATURES  # every shard's: the whole run's pairs (a shard from before has none)
        if features.is_file():
            write_atomically(output / PAIR_FEATURES, features.read_text())
        return analyse(rows, output, whole.settings, whole.recorded, edited=edited)
    finally:
        lock.close()
