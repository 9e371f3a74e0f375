"""`wpatch predict --help` as a wpatch help: option groups headed by what they set, the packaged pairs sets
listed, the defaults that run (a --config file's, when one is given before --help), Lightning's callback list left
out (a run adds its own callbacks)."""

import argparse

from wpatch.patching.autobatch import DEFAULT_BATCH
from wpatch.stimuli.pairs_file import PACKAGED

HELP_GROUPS = {  # each option group's heading in `wpatch predict --help`
    "model": "What is patched (--model.*: PatchingModule)",
    "data": "Which words and clips (--data.*: PairDataModule)",
    "writer": "Where the results go (--writer.*: PatchingResultsWriter)",
    "trainer": "Where it runs (--trainer.*: device, precision, progress bar)",
}


def explain_options(parser) -> None:
    """`wpatch predict --help` as a wpatch help: its groups headed by what they set (`HELP_GROUPS`), the packaged
    pairs sets listed, the batch size's default said, Lightning's callback list left out (a run adds its own)."""
    for key, title in HELP_GROUPS.items():
        parser.groups[key].title = title
        parser.groups[key].description = None
    helps = {
        "data.pairs_file": f"a pairs CSV, or a packaged set: {', '.join(PACKAGED)} (null: starter; docs/stimuli.md "
        "describes them)",
        "data.batch_size": "source clips per batch when group_by_source (each with all its items), else items per "
        f"batch; auto: the largest that fits the GPU's memory (wpatch.patching.autobatch). Without a config the "
        f"default is {DEFAULT_BATCH} (wpatch.patching.autobatch.DEFAULT_BATCH); a --config file's value replaces it "
        "(configs/experiment_a.yaml sets 8), and `--config FILE --help` shows the value that runs",
    }
    for action in parser._actions:
        if action.dest in helps:
            action.help = helps[action.dest] + " (type: %(type)s, default: %(default)s)"
        elif action.dest.startswith("trainer.callbacks"):
            action.help = argparse.SUPPRESS


def config_files(args: list[str]) -> list[str]:
    """The files that `--config FILE` / `--config=FILE` / `-c FILE` name in `args`, in order."""
    named = [b for a, b in zip(args, args[1:]) if a in ("--config", "-c")]
    return named + [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
