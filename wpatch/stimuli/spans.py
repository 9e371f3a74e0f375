"""Words cut from longer recordings: a pairs row's span (`start_a`, `end_a`, seconds), or the clip around a word
heard in its context (`context_start_a`, `context_end_a`), becomes a clip of its own.

The cut is a 16 kHz mono float wav under `<root>/<sha256 of the recording's bytes>/<start>-<end>.wav` (seconds),
written once and read back on later runs, so the rest of a run (log-mels, screening, the word's frames) treats it
like any other recording. A recording is hashed once per process (`recording_digest`), not once per word cut
from it: the digest is kept per path, size and modification time, so a recording replaced in place (another
size or time) is hashed again while its many words are not.
"""

import os
from functools import lru_cache
from pathlib import Path

import soundfile

from wpatch.atomic import atomic_path
from wpatch.stimuli.audio import SAMPLE_RATE, load_audio
from wpatch.stimuli.melcache import clip_digest


@lru_cache(maxsize=None)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return clip_digest(path)


def recording_digest(audio: Path) -> str:
    """sha256 of the recording's bytes, computed once per path, size and modification time in this process."""
    status = os.stat(audio)
    return _digest(str(Path(audio).resolve()), status.st_size, status.st_mtime_ns)


def cut_span(audio: Path, start: float, end: float, root: Path) -> Path:
    """The clip holding seconds [start, end) of the recording `audio` (made if missing)."""
    target = Path(root) / recording_digest(audio) / f"{start:.6f}-{end:.6f}.wav"
    if not target.exists():
        samples = load_audio(audio)[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as partial:
            soundfile.write(str(partial), samples, SAMPLE_RATE, subtype="FLOAT", format="WAV")
    return target
