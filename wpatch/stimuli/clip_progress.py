"""Clips made one by one with the console kept informed: a line every `EVERY_S` seconds (how many of how many,
the time so far, an estimate of the rest), so that a run's start, where clips are synthesised and screened before
the first batch, is never a long silence; and a stop request checked before each clip."""

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

log = logging.getLogger(__name__)
EVERY_S = 10.0  # seconds between two progress lines
Item = TypeVar("Item")


def each_clip(items: Iterable[Item], what: str, stop_check: Callable[[], None] | None = None) -> Iterator[Item]:
    """`items` one by one; before each, `stop_check()` (it raises to stop the run) and, when `EVERY_S` seconds have
    passed since the last line, one line: "`what`: 37 of 107 (12 s; about 23 s left)"."""
    items = list(items)
    start = last = time.perf_counter()
    for done, item in enumerate(items):
        now = time.perf_counter()
        if done and now - last >= EVERY_S:
            last, elapsed = now, now - start
            left = elapsed / done * (len(items) - done)
            log.info("%s: %d of %d (%.0f s; about %.0f s left)", what, done, len(items), elapsed, left)
        if stop_check is not None:
            stop_check()
        yield item
