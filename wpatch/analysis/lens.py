"""The encoder lens: from which encoder block the decoder can read the word.

For encoder block l, the decoder reads ln_post(block l's output) of the source clip (greedy transcript,
teacher-forced logp of the source word, recognised or not). That is exactly the whole-block patch (block_out,
window all, alpha 1) of source block s = l into the last target block, whose patched encoder output is
ln_post(the donor's block-s output) whatever the recipient: column t = last of the whole-block matrix. The lens is
read off those rows (denoising, donor source), so every run that patches the whole block into the last block has
it at no cost; `lens_table` gives it per category and per phonetic feature, `lens_figure` draws it.
"""

import pandas as pd
from matplotlib.figure import Figure

from wpatch.sites import BLOCK_OUT


def lens_rows(rows: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """The rows that are the lens: block l = source_layer; empty when the run has no whole-block patch into the
    encoder's last block (its target layers not all blocks)."""
    if settings.get("target_layers") is not None:
        return rows.iloc[:0]
    last = rows["target_layer"].max()
    lens = rows[
        (rows["site"] == BLOCK_OUT.name)
        & (rows["window"] == "all")
        & (rows["alpha"] == 1)
        & (rows["patch_direction"] == "denoising")
        & (rows["donor"] == "source")
        & (rows["target_layer"] == last)
    ]
    return lens


def lens_table(lens: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """Per group (all, each category, each phonetic feature) and block: items, the share whose source word the
    decoder reads (override: the transcript is the word) and the mean logp of the word."""
    groups = [("all", lens)]
    groups += [(f"category={c}", frame) for c, frame in lens.groupby("category")]
    if not features.empty:
        for feature, pairs in features.groupby("feature"):
            groups.append((f"feature={feature}", lens[lens["pair_id"].isin(set(pairs["pair_id"]))]))
    table = []
    for group, frame in groups:
        for block, of_block in frame.groupby("source_layer"):
            table.append(
                {
                    "group": group,
                    "block": int(block),
                    "items": int(of_block["item_id"].nunique()),
                    "recognised": float(of_block["override"].mean()),
                    "logp_word": float(of_block["logp_source"].mean()),
                }
            )
    return pd.DataFrame(table, columns=["group", "block", "items", "recognised", "logp_word"])


def lens_figure(table: pd.DataFrame) -> Figure:
    """Share recognised and mean logp of the word by block, a line per group (all and categories)."""
    figure = Figure(figsize=(9, 3.6))
    shares, logps = figure.subplots(1, 2)
    for group, frame in table.groupby("group", sort=False):
        if group.startswith("feature="):
            continue
        shares.plot(frame["block"], frame["recognised"], marker="o", label=group.removeprefix("category="))
        logps.plot(frame["block"], frame["logp_word"], marker="o", label=group.removeprefix("category="))
    shares.set(xlabel="encoder block l", ylabel="share of source words read", ylim=(-0.02, 1.02))
    logps.set(xlabel="encoder block l", ylabel="mean logp of the word (nats)")
    shares.set_title("encoder lens: the decoder reading ln_post(block l)", fontsize=9)
    for ax in (shares, logps):
        ax.set_xticks(sorted(table["block"].unique()))
    shares.legend(fontsize=7)
    figure.tight_layout()
    return figure


def lens_section(summary: dict) -> list[str]:
    """report.md's encoder-lens section: recognised share (and mean logp) per block and group."""
    found = summary.get("encoder_lens")
    lines = ["", "## Encoder lens", ""]
    if not found:
        return [
            *lines,
            "Not in this run: the lens is read off the whole-block patch (block_out, window all, alpha 1, "
            "denoising) into the last encoder block, which this run does not make.",
        ]
    blocks = sorted({int(b) for by_block in found.values() for b in by_block})
    lines += [
        "The decoder reading ln_post(encoder block l's output) of the source clip (column t = last of the "
        "whole-block matrix): share of source words it reads, and mean logp of the word (lens.csv).",
        "",
        "| group | " + " | ".join(f"block {b}" for b in blocks) + " |",
        "|---|" + "---|" * len(blocks),
    ]
    for group, by_block in found.items():
        cells = [
            f"{by_block[str(b)]['recognised']:.0%} ({by_block[str(b)]['logp_word']:.1f})" if str(b) in by_block else ""
            for b in blocks
        ]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return [*lines, "", "![encoder lens](figures/encoder_lens.png)"]
