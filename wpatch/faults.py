"""Crash injection for the crash-safety tests: a run signals itself at a named point of its life.

Tests set WPATCH_FAULT=<point>:<SIGNAL>; there is a point in each phase of a run: `synthesis<N>` (after the N-th
clip this session synthesised), `part<N>` (after its N-th part), `merging` (predictions.csv written under its
temporary name, not yet renamed), `merged` (after the merge), `tensorboard` (the TensorBoard file written, not
yet closed), `tables` (every table and figure written), `report` (report.md written), `finished` (the run
marked finished).
"""

import os
import signal


def fault_point(name: str) -> None:
    """If WPATCH_FAULT is `<name>:<SIGNAL>`, send that signal to this process."""
    point, _, signame = os.environ.get("WPATCH_FAULT", "").partition(":")
    if point == name:
        os.kill(os.getpid(), signal.Signals[signame])
