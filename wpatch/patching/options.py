"""A run's patching options as the code inside the package reads them: three frozen records, as openai-whisper's
`DecodingOptions` groups its decoding's: what to patch (`PatchOptions`), how each run is read out
(`ReadoutOptions`) and the attribution map (`AttributionOptions`).

`PatchingModule` keeps its flat keyword arguments, the `--model.*` options (so the command line, config files and the
recorded hparams stay as they are), and builds the records from them with `options_from`: each record's fields are
options of the same names, and every option but `model` is in exactly one record.
"""

from dataclasses import dataclass, fields
from typing import Mapping

from wpatch.errors import WpatchError
from wpatch.patching.attribution_qk import check_qk_sites


@dataclass(frozen=True)
class PatchOptions:
    """What to patch: every source x target layer (None: all blocks), site, window, alpha (and sliding `sweep`
    window), in each patch direction, from the real donor and, with `control`, an unrelated word's clip."""

    source_layers: tuple[int, ...] | None
    target_layers: tuple[int, ...] | None
    sites: tuple[str, ...]
    windows: tuple
    sweep: tuple[int, ...] | None
    alphas: tuple[float, ...]
    directions: tuple[str, ...]
    control: bool


@dataclass(frozen=True)
class ReadoutOptions:
    """How each run is read out: decoded in `language` (None: the detected one) for `task`, greedily for at most
    `max_tokens` tokens, `decode_chunk` encoder outputs at a time (how the work is split, never a row); an effect
    only where the clean runs separate the two words by `min_separation` nats or more; a word with several written
    forms ("seven" / "7") scored by the rule `word_form` (`wpatch.text.scored_word`)."""

    language: str | None
    task: str
    max_tokens: int
    decode_chunk: int
    min_separation: float
    word_form: str


@dataclass(frozen=True)
class AttributionOptions:
    """The attribution map (`method` atp; patch: none): `atp_window` frames per window, real patches beside the
    estimates (`validate` every window or a `validate_sample` of them, the `verify_top` largest), AtP*'s `graddrop`
    and `qk_fix`."""

    method: str
    atp_window: int
    validate: bool
    validate_sample: int
    verify_top: int
    graddrop: bool
    qk_fix: bool

    def check(self) -> None:
        """Refuse settings that mean nothing (validation without the map, an empty window) or that the map cannot
        honour (the QK fix on a site whose hook kind it does not handle)."""
        if self.method != "atp" and (self.validate or self.verify_top or self.graddrop or self.qk_fix):
            raise WpatchError(
                "--model.validate, --model.verify_top, --model.graddrop and --model.qk_fix need an attribution map; "
                "add --model.method atp"
            )
        if self.qk_fix:
            check_qk_sites()
        if self.atp_window < 1:
            raise WpatchError(f"atp_window {self.atp_window} holds no frame; give 1 or more frames per window")
        if self.validate_sample < 0 or self.verify_top < 0:
            raise WpatchError("validate_sample and verify_top count cells; give 0 or more")


def options_from(record: type, options: Mapping):
    """A record of `options`' values (by the record's field names), every list a tuple."""
    return record(**{f.name: _frozen(options[f.name]) for f in fields(record)})


def _frozen(value):
    return tuple(value) if isinstance(value, list) else value
