"""Which items one shard of a run computes (`--data.shard I/N`): whole source clips, dealt so the shards' item counts
stay even, depending only on the whole run's items."""

import pandas as pd

from wpatch.errors import WpatchError


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """ "I/N" as (I, N), checked (0 <= I < N); None stays None."""
    if shard is None:
        return None
    index, _, count = str(shard).partition("/")
    if not (index.strip().isdigit() and count.strip().isdigit() and int(index) < int(count)):
        raise WpatchError(f"shard {shard!r} is not I/N with 0 <= I < N; e.g. --data.shard 0/8 (the first of 8)")
    return int(index), int(count)


def shard_of(items: pd.DataFrame, index: int, count: int) -> pd.Series:
    """Which items are in shard `index` of `count`: every item of a source clip goes to the same shard (its
    whole-block patch is computed once, as in the whole run); the clips are dealt largest first (ties: in clip
    order) to the shard with the fewest items so far (ties: the lowest index). It depends only on the whole run's
    items, never on the batch size or on what other shards did."""
    sizes = items.groupby("source_clip").size()
    load, shard = [0] * count, {}
    for clip, size in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        chosen = min(range(count), key=lambda i: (load[i], i))
        shard[clip], load[chosen] = chosen, load[chosen] + size
    return items["source_clip"].map(shard) == index
