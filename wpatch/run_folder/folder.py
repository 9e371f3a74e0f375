"""The life of a run's output folder: writability check, lock, stored settings and signals.

- `check_writable` tells at once, creating nothing, whether the folder may be used and can be written: a run
  never overwrites a file it did not make, so only a new folder, an empty one or a run's own (one with its
  run.json) is taken, and an empty name (which would mean the current folder) is refused. `claim_folder`
  creates it and takes an exclusive `fcntl.flock` on `<folder>/.lock`; the kernel drops the lock when the
  process ends, however it ends, so a killed run never leaves the folder stuck.
- `run.json` holds the settings a run's rows depend on (written when the run starts); a resume with other
  settings is refused, naming the first difference. Each start appends a session (time, code version,
  accelerator, devices, batch size), recorded but never compared.
- `StopOnSignal`: the first SIGTERM or SIGINT asks the run to stop before its next batch (or clip, while
  clips are synthesised); a second one ends the process (and the DDP processes it launched) at once. A process
  that stops leaves `<folder>/.stop` (the signal's number), which every other rank, on this node or another,
  reads before its next batch and stops too; the next start of the run removes it. Signal handlers can only be
  set in the main thread: a run in another thread keeps the caller's, and says so.
"""

import errno
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tqdm import tqdm

from wpatch.atomic import write_atomically
from wpatch.errors import WpatchError
from wpatch.run_summary import with_defaults

LOCK = ".lock"
STOP = ".stop"  # left by a rank that stopped on a signal: every other rank stops too
RUN_MARKS = ("run.json", "summary.json")  # a folder holding either is a wpatch run's (summary.json: a finished one)


class RunStopped(Exception):
    """The run stopped early on a signal; every finished part is kept."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def way_out(error: OSError) -> str:
    """What to do about a write that failed in a run's folder, by its cause."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "make room"
    if error.errno == errno.EROFS:
        return "its file system is read-only: remount it read-write"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "fix the folder's permissions"
    return "fix what stopped the write"


def not_writable(folder: Path, error: OSError) -> WpatchError:
    fix = "remount its file system read-write" if error.errno == errno.EROFS else "fix its permissions"
    return WpatchError(
        f"output directory {folder} is not writable ({error.strerror}); choose another --writer.output_dir or {fix}"
    )


def check_writable(folder: str | Path) -> None:
    """Raise if `folder` may not be used or cannot be created or written. It must be named (an empty name would
    be the current folder); an existing one must be empty (but for a lock) or hold a run (`RUN_MARKS`), so no
    file the run did not make is overwritten; its nearest existing ancestor must be a directory that takes a
    (temporary) file. Creates nothing."""
    if not str(folder).strip():
        raise WpatchError(
            "--writer.output_dir is empty (the run would be written into the current folder); choose another "
            "--writer.output_dir, e.g. runs/experiment_a"
        )
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise WpatchError(f"output directory {folder} is an existing file; choose another --writer.output_dir")
    if folder.is_dir():
        try:
            names = sorted(path.name for path in folder.iterdir() if path.name != LOCK)
        except OSError as error:
            raise not_writable(folder, error) from None
        if names and not set(names) & set(RUN_MARKS):
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise WpatchError(
                f"output directory {folder} holds files that are not a wpatch run's ({shown}); a run never "
                "overwrites them: choose another --writer.output_dir (a new or empty folder)"
            )
    existing = next(path for path in (folder, *folder.absolute().parents) if path.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise not_writable(folder, error) from None


def claim_folder(folder: Path):
    """Check, create and lock `folder`; returns the open lock file (keep it: closing it unlocks)."""
    check_writable(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / LOCK, "a+")
    except OSError as error:
        raise not_writable(folder, error) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "unknown"
        lock.close()
        raise WpatchError(
            f"output directory {folder} is in use by another run (pid {owner}); wait for it to end or choose another "
            "--writer.output_dir"
        ) from None
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def remove_partials(*folders: Path) -> None:
    """Remove what a killed process left half-written (`.*.partial`, see `wpatch.atomic`) in `folders`; only for
    the holder of the folder's lock, which says that no other process is writing."""
    for folder in folders:
        for stale in folder.glob(".*.partial"):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_version() -> str:
    """The git commit of wpatch's checkout (with `+dirty` if it has changes), else the package version."""
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():  # a checkout (in an installed copy, git would report any enclosing repository)
        try:
            commit = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            return commit + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return importlib.metadata.version("wpatch")


def record_run(folder: Path, settings: dict, session: dict, resume: bool, defaults: dict) -> None:
    """Write run.json for a new run, or check a resumed run's settings against it and append the session; a
    setting the run did not record (it was made before the setting existed) takes its default in `defaults`, and a
    note says so."""
    path = folder / "run.json"
    run = {"settings": settings, "sessions": []}
    if resume and path.exists():
        run = json.loads(path.read_text())
        run["settings"], note = with_defaults(run["settings"], defaults, path)
        stored = json.loads(json.dumps(settings, default=str))
        for key, value in stored.items():
            if run["settings"].get(key) != value:
                raise WpatchError(
                    f"output directory {folder} holds a run with {key}={run['settings'].get(key)!r}, not {value!r}; "
                    "resume it with the same settings, or choose another --writer.output_dir"
                )
        if note:
            print(note, file=sys.stderr)
        if run["sessions"] and run["sessions"][-1]["code_version"] != session["code_version"]:
            print(
                f"wpatch: note: resuming a run started by code version {run['sessions'][-1]['code_version']} with "
                f"{session['code_version']} (recorded in run.json)",
                file=sys.stderr,
            )
    run["sessions"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **session})
    write_atomically(path, json.dumps(run, indent=2, default=str) + "\n")


class StopOnSignal:
    """SIGTERM / SIGINT handling: the first signal sets `signum` (the run stops before its next batch); a
    second one kills the processes in `children` and exits at once with 128 + signal number."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self.children: list = []  # subprocess.Popen objects (Lightning's DDP launcher's)
        self.resume_command = ""  # printed when a second signal ends the process
        self.previous: dict = {}
        self.flag: Path | None = None  # the run's stop file (`STOP`), shared by every rank of the run
        self.noted = False  # whether the note on a run outside the main thread was given

    def install(self) -> None:
        """Take SIGTERM and SIGINT, where Python lets a handler be set: in the main thread. Elsewhere (a run started
        from another thread) the signals stay with the caller's handlers, and a note says so, once."""
        if threading.current_thread() is not threading.main_thread():
            if not self.noted:
                self.noted = True
                tqdm.write(
                    "wpatch: note: this run is outside the main thread, where Python cannot catch signals: Ctrl-C and "
                    "SIGTERM do not stop it between batches (start it from the main thread for that)",
                    file=sys.stderr,
                )
            return
        for signum in self.SIGNALS:
            previous = signal.signal(signum, self.handle)
            self.previous.setdefault(signum, previous)

    def restore(self) -> None:
        """Put back the handlers that were there before the first `install`."""
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def handle(self, signum: int, _frame) -> None:
        if self.signum is None:
            self.signum = signum
            tqdm.write(  # through the progress bar, so the line is not written onto the bar's
                f"wpatch: {signal.Signals(signum).name} received: stopping before the next batch or clip (send it "
                "again to stop at once)",
                file=sys.stderr,
            )
            return
        for child in self.children:
            child.kill()
        tqdm.write(
            f"wpatch: {signal.Signals(signum).name} received again: stopped at once; every finished batch is kept; "
            f"continue with: {self.resume_command}",
            file=sys.stderr,
        )
        os._exit(128 + signum)

    def check(self) -> None:
        """Raise RunStopped if a signal came to this process (leaving the stop file for the other ranks) or
        another rank of the run stopped (its stop file is there)."""
        if self.signum is None and self.flag is not None and self.flag.exists():
            self.signum = int(self.flag.read_text() or signal.SIGTERM)
        if self.signum is not None:
            if self.flag is not None and not self.flag.exists():
                write_atomically(self.flag, str(int(self.signum)))
            raise RunStopped(self.signum)
