"""summary.json, typed: a `RunSummary` is a finished run's settings, what the run recorded of itself (`Recorded`),
what the analysis found (`Findings`) and, for a table edited since the run wrote it, what differs. The writer fills
it, `wpatch merge` combines the shards' (`Recorded.combined`), and `wpatch report`, `wpatch merge` and `load_run`
read it back (`RunSummary.read`). Its layout (`RunSummary.as_dict`): `edited` (when there is one), `version`, the
settings, `primary_condition`, the recorded parts, then the rest of the findings; a part (not a setting) that is
None is left out.
"""

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from wpatch.errors import WpatchError

VERSION = 1  # summary.json's layout; one made before the number was kept has this layout too


def _part(merged: str):
    """A part of summary.json, absent (None) until filled; `merged`: how `wpatch merge` makes the whole run's part
    from its shards' ("sum": added up; "first": the first shard's, which every shard records alike; "drop": none)."""
    return field(default=None, metadata={"merged": merged})


@dataclass
class Recorded:
    """What a run records of itself besides its settings: kept by a re-analysis (`wpatch report`, which adds
    `reanalysed`) and combined by a merge, each part by its own rule (see `_part`)."""

    wall_time_s: float | None = _part("sum")
    clip_cache: dict | None = _part("sum")  # counts per kind of clip
    screening: dict | None = _part("first")  # clips heard and items kept (`--data.require_heard`)
    voice_choice: dict | None = _part("first")  # the voice chosen per clip (`--data.tts best`)
    silent_clips: list | None = _part("first")  # clips without speech, still run
    word_frames: dict | None = _part("first")  # how the frames of words heard in context were found
    shard_items: dict | None = _part("drop")  # a shard's index, the shard count and the whole run's items
    environment: dict | None = _part("first")
    model_card: dict | None = _part("first")
    reanalysed: dict | None = _part("drop")  # code version and time of the last `wpatch report`

    @classmethod
    def combined(cls, shards: list["Recorded"]) -> "Recorded":
        """The whole run's record made from its shards', in shard order."""
        whole = {}
        for part in fields(cls):
            values = [getattr(shard, part.name) for shard in shards]
            rule = part.metadata["merged"]
            if rule == "drop":
                whole[part.name] = None
            elif rule == "first" or values[0] is None:
                whole[part.name] = values[0]
            elif isinstance(values[0], dict):
                whole[part.name] = {key: sum(value[key] for value in values) for key in values[0]}
            else:
                whole[part.name] = round(sum(values), 2)
        return cls(**whole)


@dataclass
class Findings:
    """What the analysis found (`wpatch.analysis.analyse`), summary.json's parts after the settings."""

    primary_condition: dict
    groups: dict
    conditions: dict
    features: dict | None = None
    encoder_lens: dict | None = None
    atp_validation: dict | None = None
    voice_differences_mean_abs: dict | None = None
    voice_spread: dict | None = None


PARTS = {part.name for cls in (Recorded, Findings) for part in fields(cls)} | {"edited", "version"}


@dataclass
class RunSummary:
    """A finished run's summary.json: its `settings` (every other key, in the order the run wrote them), what it
    `recorded`, what the analysis `found`, `edited` (what differs from the table the run wrote, else None) and the
    layout's `version`."""

    settings: dict
    recorded: Recorded = field(default_factory=Recorded)
    found: Findings | None = None
    edited: str | None = None
    version: int = VERSION

    def as_dict(self) -> dict:
        """summary.json's content, in its layout."""
        found = {} if self.found is None else {p.name: getattr(self.found, p.name) for p in fields(Findings)}
        recorded = {p.name: getattr(self.recorded, p.name) for p in fields(Recorded)}
        first = {"edited": self.edited, "version": self.version}
        parts = {"primary_condition": found.pop("primary_condition", None), **recorded, **found}
        return {
            **{key: value for key, value in first.items() if value is not None},
            **self.settings,  # None included: a setting left unset
            **{key: value for key, value in parts.items() if value is not None},
        }

    @classmethod
    def from_dict(cls, data: dict, source="summary.json") -> "RunSummary":
        """A summary read back; one of a newer layout than this code reads is refused, naming `source`."""
        version = data.get("version", VERSION)
        if version > VERSION:
            raise WpatchError(
                f"{source} has layout version {version}, newer than this wpatch reads ({VERSION}); read it with the "
                "wpatch that wrote it, or update wpatch"
            )
        recorded = Recorded(**{p.name: data[p.name] for p in fields(Recorded) if p.name in data})
        found = None
        if "groups" in data:
            found = Findings(**{p.name: data[p.name] for p in fields(Findings) if p.name in data})
        settings = {key: value for key, value in data.items() if key not in PARTS}
        return cls(settings, recorded, found, data.get("edited"), version)

    @classmethod
    def read(cls, path) -> "RunSummary":
        """A run's summary.json (`path`: the file) read back."""
        path = Path(path)
        return cls.from_dict(json.loads(path.read_text()), path)

    def json(self) -> str:
        """summary.json's text."""
        return json.dumps(self.as_dict(), indent=2, default=str) + "\n"


def with_defaults(settings: dict, defaults: dict, source) -> tuple[dict, str | None]:
    """`settings` (as a run recorded them in `source`, run.json or summary.json) with every setting it lacks taken
    at its default (a run made before the setting existed ran as its default does), and the note that says so
    (None when none was missing)."""
    missing = {key: value for key, value in defaults.items() if key not in settings}
    if not missing:
        return settings, None
    taken = ", ".join(f"{key}={value!r}" for key, value in missing.items())
    return {**settings, **missing}, (
        f"wpatch: note: {source} has no setting {', '.join(missing)} (the run was made before it existed): taken "
        f"as its default: {taken}"
    )
