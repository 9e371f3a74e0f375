"""report.md: a one-page report of a run (settings, data card, recognition, the main matrices, every condition,
the phonetic features, sanity checks), with its images from `figures/`."""

import pandas as pd

from wpatch.analysis.attribution import atp_section
from wpatch.analysis.depth import ModelCard
from wpatch.analysis.figures import condition_title, figure_file, number
from wpatch.analysis.lens import lens_section
from wpatch.analysis.tables import condition_label
from wpatch.rows import CONDITION, MEASURES
from wpatch.sites import BLOCK_OUT


def report_markdown(rows: pd.DataFrame, summary: dict) -> str:
    """A one-page report of a run (`report.md`, images from `figures/`): settings, data card, recognition, the
    main matrices side by side on shared colour scales, sanity checks; its first line says so when the table was
    edited after the run wrote it (`edited`)."""
    groups = summary["groups"]
    keys = (
        "model",
        "precision",
        "sites",
        "windows",
        "alphas",
        "directions",
        "min_separation",
        "max_tokens",
        "tts",
        "pairs_file",
        "limit",
        "batch_size",
        "code_version",
    )
    lines = ["# wpatch run", "", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {summary[k]} |" for k in keys if k in summary]
    if "model_card" in summary:
        lines.insert(6 + int("model" in summary), f"| model card | {ModelCard(**summary['model_card']).line()} |")
    categories = ", ".join(f"{c or '(none)'}: {n}" for c, n in rows.groupby("category")["pair_id"].nunique().items())
    lines += [
        "",
        "## Data",
        "",
        f"- {rows['pair_id'].nunique()} pairs, {rows['item_id'].nunique()} items "
        f"(pair x direction x voice), {len(rows)} rows",
        f"- voices: {', '.join(sorted(rows['voice'].unique()))}",
        f"- categories (pairs): {categories}",
        *context_lines(rows, summary),
    ]
    share = groups.get("recognised", {}).get("items", 0) / max(groups["all"]["items"], 1)
    lines += [
        "",
        "## Recognition",
        "",
        f"- clean source clip recognised as its word: "
        f"{groups.get('recognised', {}).get('items', 0)} of {groups['all']['items']} items ({share:.0%})",
    ]
    lines += [
        "",
        "## Main matrices (" + condition_title(summary["primary_condition"]) + ")",
        "",
        "All items (top) and recognised items only (bottom); colour scales fixed per measure.",
        "",
    ]
    for suffix in ("", "_recognised"):
        group = groups.get("recognised" if suffix else "all", {})
        images = [f"![{m}](figures/{m}_matrix{suffix}.png)" for m in MEASURES if m in group]
        lines.append(" ".join(images))
        lines.append("")
    lines += [
        "| measure | diagonal | off-diagonal | recognised diagonal | recognised off-diagonal |",
        "|---|---|---|---|---|",
    ]
    for m in MEASURES:
        if m in groups["all"]:
            a, r = groups["all"][m], groups.get("recognised", {}).get(m, {})
            cell = [
                number(v, 3) if v is not None else "n/a"
                for v in (
                    a["diagonal_mean"],
                    a["off_diagonal_mean"],
                    r.get("diagonal_mean"),
                    r.get("off_diagonal_mean"),
                )
            ]
            lines.append(f"| {m} | " + " | ".join(cell) + " |")
    lines += speaker_section(groups)
    lines += condition_section(rows, summary)
    lines += feature_section(summary)
    lines += lens_section(summary)
    lines += atp_section(summary)
    lines += ["", "## Sanity checks", ""]
    primary = summary["primary_condition"]
    in_primary = (rows[CONDITION] == pd.Series(primary)).all(axis=1)
    diagonal = rows[in_primary & (rows["source_layer"] == rows["target_layer"])]
    if primary["site"] == BLOCK_OUT.name and primary["window"] == "all" and primary["alpha"] == 1 and len(diagonal):
        gap = ((diagonal["logp_source"] - diagonal["logp_target"]) - diagonal["ld_source_clean"]).abs().max()
        verdict = "ok" if gap < 1e-3 else "CHECK"
        lines.append(
            f"- diagonal = clean run (whole-block patch at s = t): largest difference of the log-probability"
            f" gap from the clean source run {gap:.2g} nats ({verdict})"
        )
    lines.append(f"- recognised share: {share:.0%}")
    if summary.get("silent_clips"):
        lines.append(
            f"- clips without speech (too short or too quiet; listed in summary.json silent_clips): "
            f"{len(summary['silent_clips'])}, their items kept"
        )
    lines.append(
        f"- effect defined (clean runs separate the words by min_separation) on "
        f"{rows['effect_valid'].mean():.0%} of rows"
    )
    notice = (
        [f"> **Not the run's table**: `{summary['edited']}`; analysed as edited (`--allow-edited`).", ""]
        if summary.get("edited")
        else []
    )
    return "\n".join(notice + lines) + "\n"


def context_lines(rows: pd.DataFrame, summary: dict) -> list[str]:
    """The Data section's lines for words heard in context (a carrier sentence, or a recording's other words): the
    rows whose transcript kept the context's other words, and how the words' frames were found
    (summary.json's `word_frames`); none for words alone."""
    heard = rows[rows["carrier"] != ""] if "carrier" in rows else rows.iloc[:0]
    if heard.empty:
        return []
    kept = heard["carrier_kept"]
    lines = [
        f"- words in context: {heard['item_id'].nunique()} items; the transcript kept the context's other words in "
        f"{kept.sum()} of {len(kept)} rows ({kept.mean():.0%}, `carrier_kept`): override, retained and transfer "
        f"count only those"
    ]
    found = summary.get("word_frames") or {}
    if "method" in found:
        lines.append(
            f"- the words' frames (`word` window): {found['method']}, {found['model']}, {found['clips']} clips"
        )
    if "recorded" in found:
        recorded = found["recorded"]
        lines.append(f"- the recorded words' frames (`word` window): {recorded['method']}, {recorded['clips']} clips")
    return lines


def speaker_section(groups: dict) -> list[str]:
    """report.md's speaker part, for recordings whose rows name their speakers: per group of same or different
    speakers (and each source accent), its items and every measure's diagonal and off-diagonal mean (all items)."""
    named = [g for g in groups if g.startswith(("speakers=", "source_accent=")) and "|" not in g]
    if not named:
        return []
    lines = [
        "",
        "## By speaker",
        "",
        "Same speaker: one person says both words; different: the source word from another (matrices.csv and "
        "cells.csv have every group's cells, with 95% intervals).",
        "",
        "| group | items | " + " | ".join(f"{m} diagonal | {m} off-diagonal" for m in ("effect", "transfer")) + " |",
        "|---|---|---|---|---|---|",
    ]
    for group in named:
        found = groups[group]
        cells = [
            number(found[m][k], 3) if m in found and found[m][k] is not None else "n/a"
            for m in ("effect", "transfer")
            for k in ("diagonal_mean", "off_diagonal_mean")
        ]
        lines.append(f"| {group} | {found['items']} | " + " | ".join(cells) + " |")
    return lines


def condition_section(rows: pd.DataFrame, summary: dict) -> list[str]:
    """report.md's table of every condition's effect, with its figures, when a run has more than one condition
    (e.g. several sites: encoder and decoder side by side)."""
    conditions = rows[CONDITION].drop_duplicates().to_dict("records")
    if len(conditions) < 2:
        return []
    lines = [
        "",
        "## Every condition",
        "",
        "The normalised effect, mean over pairs (cells.csv has it with its 95% interval, beside every other "
        "measure). A sweep's row gives its (layer x window start) map's mean.",
        "",
        "| condition | effect diagonal (sweep: map mean) | effect off-diagonal | pairs |",
        "|---|---|---|---|",
    ]
    images = []
    for condition in conditions:
        label = condition_label(condition)
        found = summary.get("conditions", {}).get(label, {})
        sweep = condition["window"] == "sweep"
        values = [found.get("effect_mean")] if sweep else [found.get("diagonal_mean"), found.get("off_diagonal_mean")]
        cells = [number(v, 3) if v is not None else "n/a" for v in values] + (["n/a"] if sweep else [])
        lines.append(
            f"| {condition_title(condition)} | " + " | ".join(cells) + f" | {found.get('effect_pairs', 'n/a')} |"
        )
        if sweep or found.get("effect_pairs"):
            images.append(f"![{label}](figures/{figure_file(('sweep_map_' if sweep else 'effect_matrix_') + label)})")
    return [*lines, "", " ".join(images)]


def feature_section(summary: dict) -> list[str]:
    """report.md's phonetic-feature part: per feature changed by the minimal pairs, its pairs and, for the primary
    condition, the effect's diagonal / off-diagonal means, with the effect maps (features.csv has every measure)."""
    if not summary.get("features"):
        return []
    label = condition_label(summary["primary_condition"])
    lines = [
        "",
        "## Phonetic features",
        "",
        "Effect by the phonetic feature a minimal pair changes (features.csv: every measure, per position, with "
        "95% intervals over pairs).",
        "",
        "| feature | pairs | positions | effect diagonal | effect off-diagonal |",
        "|---|---|---|---|---|",
    ]
    for feature, found in summary["features"].items():
        main = found.get(label, {})
        cells = [
            number(main[k], 3) if main.get(k) is not None else "n/a" for k in ("diagonal_mean", "off_diagonal_mean")
        ]
        lines.append(f"| {feature} | {found['pairs']} | {', '.join(found['positions'])} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        " ".join(
            f"![{feature}](figures/{figure_file(f'feature_{feature}_{label}')})"
            for feature, found in summary["features"].items()
            if label in found
        )
    )
    return lines
