"""Runs on models of different depth compared at relative depth: layer / (depth - 1), 0 the first block and 1
the last, with each run's diagonal and off-diagonal profiles (mean effect against relative source and target
depth) and 95% intervals over pairs, in one table and one figure. Each run's model is named: family, size and
where its checkpoint came from."""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from wpatch.analysis.stats import pooled_interval
from wpatch.analysis.tables import read_rows_and_summary, row_groups
from wpatch.errors import WpatchError
from wpatch.rows import CONDITION
from wpatch.sites import site_named

# openai-whisper sizes by (width, encoder blocks, decoder blocks, mel bins); distil and turbo keep large-v3's encoder
SIZES = {
    (384, 4, 4, 80): "tiny",
    (512, 6, 6, 80): "base",
    (768, 12, 12, 80): "small",
    (1024, 24, 24, 80): "medium",
    (1280, 32, 32, 80): "large",
    (1280, 32, 32, 128): "large-v3",
    (1280, 32, 4, 128): "large-v3-turbo",
    (1280, 32, 2, 128): "distil-large-v3",
}
SOURCES = {
    "checkpoint": "openai-whisper checkpoint",
    "download": "openai-whisper download",
    "ctranslate2": "CTranslate2 (faster-whisper) directory",
    "huggingface": "Hugging Face transformers checkpoint",
}
PROFILES = ("diagonal (s = t)", "off-diagonal, by source depth", "off-diagonal, by target depth")


@dataclass
class ModelCard:
    """What model a run patched: its spec, family, size, checkpoint source and block counts."""

    spec: str
    family: str
    size: str
    source: str
    encoder_blocks: int
    decoder_blocks: int

    def line(self) -> str:
        return (
            f"{self.family} {self.size} ({self.encoder_blocks} encoder / {self.decoder_blocks} decoder blocks), "
            f"{self.source}: {self.spec}"
        )


def model_card(spec: str) -> ModelCard:
    """The model card of a model spec, read from its header (nothing is loaded)."""
    from wpatch.models.loading import OFFLINE_BUNDLES, locate, model_dims

    dims = model_dims(spec)
    kind, _ = locate(spec)
    if kind == "ctc":  # the wav2vec2 family: an encoder only, its size by width and depth
        from wpatch.models.wav2vec2 import FAMILY_NAMES

        size, where = f"d={dims.n_audio_state}", "hub id, from the Hugging Face cache"
        source = f"Hugging Face CTC model ({where if not Path(spec).expanduser().exists() else 'folder'})"
        return ModelCard(spec, FAMILY_NAMES[dims.model_type], size, source, dims.n_audio_layer, 0)
    size = SIZES.get((dims.n_audio_state, dims.n_audio_layer, dims.n_text_layer, dims.n_mels))
    size = (size or f"custom d={dims.n_audio_state}") + (".en" if dims.n_vocab == 51864 else "")
    source = SOURCES[kind]
    if kind == "ctranslate2" and spec in OFFLINE_BUNDLES:
        source += " (offline bundle)"
    elif kind == "huggingface" and not Path(spec).expanduser().exists():
        source += " (hub id, from the Hugging Face cache)"
    return ModelCard(spec, "Whisper", size, source, dims.n_audio_layer, dims.n_text_layer)


def run_model(run) -> tuple[dict[str, int], str]:
    """Blocks per stack (encoder, decoder) of a run's model, and its model card line."""
    return _depths(*read_rows_and_summary(run))


def _depths(rows: pd.DataFrame, summary: dict) -> tuple[dict[str, int], str]:
    """Blocks of each stack a run's sites patch, and its model card line: from summary.json's model card, else
    from its model spec, else (the model not here) from the largest layer its rows name."""
    stacks = {site_named(site).stack for site in rows["site"].unique()}
    try:
        card = ModelCard(**summary["model_card"]) if "model_card" in summary else model_card(summary["model"])
        blocks = {"encoder": card.encoder_blocks, "decoder": card.decoder_blocks}
        return {stack: blocks[stack] for stack in sorted(stacks)}, card.line()
    except (WpatchError, KeyError):
        stack_of = rows["site"].map(lambda site: site_named(site).stack)
        layers = rows[["source_layer", "target_layer"]].max(axis=1).groupby(stack_of).max()
        depths = {stack: int(layer) + 1 for stack, layer in layers.items()}
        return depths, f"{summary.get('model')} (not loadable here: depth from its rows)"


def depth_profiles(runs: list, measure: str = "effect", group: str = "all") -> pd.DataFrame:
    """Per run, site and condition: `measure`'s mean with a 95% interval over pairs on the diagonal (s = t, at
    relative depth s / (depth - 1)) and off it (s != t, at each relative source depth over all targets, and at
    each relative target depth over all sources). `attrs["models"]` holds each run's model card line."""
    profiles, models = [], {}
    for run in runs:
        rows, summary = read_rows_and_summary(run)
        depths, models[str(run)] = _depths(rows, summary)
        rows = row_groups(rows).get(group, rows.iloc[:0])
        for (site, *condition), cell in rows.groupby(["site", *[c for c in CONDITION if c != "site"]]):
            depth = depths[site_named(site).stack]
            scale = max(depth - 1, 1)
            diagonal = cell["source_layer"] == cell["target_layer"]
            parts = [(PROFILES[0], "source_layer", cell[diagonal])]
            parts += [(PROFILES[1], "source_layer", cell[~diagonal]), (PROFILES[2], "target_layer", cell[~diagonal])]
            for profile, layer_column, part in parts:
                for layer, rows_at in part.groupby(layer_column):
                    mean, low, high, pairs = pooled_interval(rows_at, measure)
                    profiles.append(
                        {
                            "run": str(run),
                            "site": site,
                            **dict(zip([c for c in CONDITION if c != "site"], condition)),
                            "profile": profile,
                            "layer": int(layer),
                            "depth": depth,
                            "relative_depth": layer / scale,
                            "mean": mean,
                            "low": low,
                            "high": high,
                            "pairs": pairs,
                        }
                    )
    table = pd.DataFrame(profiles)
    table.attrs["models"] = models
    return table


def depth_figure(table: pd.DataFrame, measure: str = "effect") -> Figure:
    """One figure: a panel per profile (diagonal, off-diagonal by source and by target depth), each run's mean
    against relative depth with its 95% interval as a band; one line per run and condition."""
    figure = Figure(figsize=(13, 4.2))
    axes = figure.subplots(1, len(PROFILES), sharey=True)
    condition = [c for c in CONDITION if c != "site"]
    for ax, profile in zip(axes, PROFILES):
        for (run, site, *values), line in table[table["profile"] == profile].groupby(["run", "site", *condition]):
            varied = [f"{c}={v}" for c, v in zip(condition, values) if table[c].nunique() > 1]
            label = " ".join([table.attrs.get("models", {}).get(run, run).split(",")[0], site, *varied])
            line = line.sort_values("relative_depth")
            (drawn,) = ax.plot(line["relative_depth"], line["mean"], marker="o", label=label)
            ax.fill_between(line["relative_depth"], line["low"], line["high"], color=drawn.get_color(), alpha=0.2)
        ax.set_title(profile)
        ax.set_xlabel("relative depth, layer / (depth - 1)")
        ax.set_xlim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{measure} (mean over pairs, 95% interval)")
    axes[-1].legend(fontsize=7, loc="best")
    figure.tight_layout()
    return figure
