"""The attribution map (attributions.csv and .npz, `--model.method atp`) drawn per site, block and frame
(`map_figures`), and how far it can be trusted: its estimates beside real patching of the same cells, per site and
block (`validation_table`), a scatter figure per site, and report.md's section.

Per site and block, over the cells patched for real (every item, patch direction and window): Spearman's rank
correlation of estimate and real change, top-10 recall (of the 10 cells the real patches move most, the share
among the 10 the estimate ranks highest, by absolute value), the mean absolute error of the normalised estimate
(estimate_effect - patched_effect, effect units) and of the raw one (nats), and the sign agreement (cells whose
real change is not zero). A site's estimate is called trustworthy where every block has Spearman >= 0.8 and sign
agreement >= 0.9.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from wpatch.analysis.figures import heatmap, save_figure
from wpatch.atomic import write_atomically
from wpatch.patching.attribution import ENCODER_SITES
from wpatch.rows import ATTRIBUTION_COLUMNS

TRUST_SPEARMAN, TRUST_SIGN = 0.8, 0.9
TOP = 10


def read_attributions(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""], usecols=ATTRIBUTION_COLUMNS)


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with fewer than 3 cells or a constant side."""
    if len(a) < 3:
        return float("nan")
    return float(a.rank().corr(b.rank()))


def agreement(cells: pd.DataFrame) -> dict:
    """The validation figures of a set of cells patched for real."""
    moved = cells[cells["patched"] != 0]
    top = min(TOP, len(cells))
    real_top = set(cells["patched"].abs().nlargest(top).index)
    estimated_top = set(cells["estimate"].abs().nlargest(top).index)
    effect = cells.dropna(subset=["estimate_effect", "patched_effect"])
    return {
        "cells": len(cells),
        "spearman": spearman(cells["estimate"], cells["patched"]),
        f"top{TOP}_recall": len(real_top & estimated_top) / top if top else float("nan"),
        "mae_effect": float((effect["estimate_effect"] - effect["patched_effect"]).abs().mean()),
        "mae_nats": float((cells["estimate"] - cells["patched"]).abs().mean()),
        "sign_agreement": float((np.sign(moved["estimate"]) == np.sign(moved["patched"])).mean()),
    }


def validation_table(attributions: pd.DataFrame) -> pd.DataFrame:
    """One row per site and block (and per site over every block, layer "all") with `agreement`'s figures, over
    the cells patched for real (validate and verify alike); empty when none were."""
    checked = attributions[attributions["checked"].isin(["validate", "verify"])]
    rows = []
    for site, of_site in checked.groupby("site", sort=False):
        for layer, cells in [*of_site.groupby("layer"), ("all", of_site)]:
            rows.append({"site": site, "layer": str(layer), **agreement(cells)})
    return pd.DataFrame(rows)


def trusted(table: pd.DataFrame, site: str) -> bool:
    blocks = table[(table["site"] == site) & (table["layer"] != "all")]
    return bool((blocks["spearman"] >= TRUST_SPEARMAN).all() and (blocks["sign_agreement"] >= TRUST_SIGN).all())


def scatter(attributions: pd.DataFrame, site: str) -> Figure:
    """Estimate against real patching (nats) of one site's cells patched for real, a colour per block."""
    cells = attributions[(attributions["site"] == site) & attributions["checked"].isin(["validate", "verify"])]
    figure = Figure(figsize=(4.8, 4.2))
    ax = figure.add_subplot()
    for layer, of_layer in cells.groupby("layer"):
        ax.scatter(of_layer["patched"], of_layer["estimate"], s=10, alpha=0.7, label=f"block {layer}")
    low = float(np.nanmin(cells[["patched", "estimate"]].to_numpy())) if len(cells) else -1.0
    high = float(np.nanmax(cells[["patched", "estimate"]].to_numpy())) if len(cells) else 1.0
    ax.plot([low, high], [low, high], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("real patching: change of logp_source - logp_target (nats)")
    ax.set_ylabel("AtP estimate (nats)")
    ax.set_title(f"{site}: AtP against real patching ({len(cells)} cells)")
    ax.legend(fontsize=7)
    figure.tight_layout()
    return figure


def frame_maps(output_dir: Path) -> dict[tuple[str, str], pd.DataFrame]:
    """Per encoder site (AtP estimates them all) and patch direction: the AtP estimate of patching one frame
    (nats), blocks x frames, the mean over items (attributions.npz), up to the last frame any item's speech window
    reaches (attributions.csv). Directions are kept apart: denoising raises logp_source - logp_target where
    noising lowers it, so their mean would cancel. {} for a run without an attribution map."""
    if not (output_dir / "attributions.npz").exists():
        return {}
    table = read_attributions(output_dir / "attributions.csv")
    with np.load(output_dir / "attributions.npz") as saved:
        sites = [str(site) for site in saved["sites"]]
        arrays = {key: saved[key] for key in saved.files if key != "sites"}
    if not arrays:
        return {}
    speech = table[table["window"] != "rest"]
    end = int(speech["window_end"].max()) if len(speech) else next(iter(arrays.values())).shape[-1]
    maps = {}
    for direction in table["patch_direction"].unique():
        mean = np.mean([a for key, a in arrays.items() if key.split("/")[1] == direction], axis=0, dtype=np.float64)
        for site in table["site"].unique():
            maps[site, direction] = pd.DataFrame(mean[sites.index(site), :, :end])
    return maps


def map_file(site: str, direction: str) -> str:
    return f"figures/atp_map_{site}_{direction}.png"


def map_figures(output_dir: Path) -> None:
    """`map_file` per site and patch direction (`frame_maps`), on a diverging scale symmetric about 0."""
    maps = frame_maps(output_dir)
    items = read_attributions(output_dir / "attributions.csv")["item_id"].nunique() if maps else 0
    for (site, direction), frames in maps.items():
        largest = float(np.nanmax(np.abs(frames.to_numpy()))) or 1.0
        figure = heatmap(
            frames.rename_axis(index="block", columns="frame"),
            f"{site}, {direction}: AtP estimate of patching one frame, mean over {items} items",
            axis_names=("encoder frame (20 ms)", "encoder block"),
            measure="estimate",
            scale=(-largest, largest),
            colour_label="change of logp_source - logp_target (nats)",
            size=(min(0.25 * frames.shape[1] + 4, 20), 0.5 * frames.shape[0] + 2),
        )
        save_figure(figure, output_dir / map_file(site, direction))


def atp_validation(output_dir: Path) -> dict | None:
    """Write atp_validation.csv and figures/atp_validation_<site>.png from attributions.csv; the figures per site
    for summary.json's `atp_validation` (None when the run has no attribution map; {} when nothing was patched
    for real)."""
    path = output_dir / "attributions.csv"
    if not path.exists():
        return None
    attributions = read_attributions(path)
    table = validation_table(attributions)
    if table.empty:
        return {}
    write_atomically(output_dir / "atp_validation.csv", table.to_csv(index=False))
    summary = {}
    for site in table["site"].unique():
        save_figure(scatter(attributions, site), output_dir / "figures" / f"atp_validation_{site}.png")
        of_site = table[table["site"] == site].set_index("layer")
        summary[site] = {
            "trusted": trusted(table, site),
            **{layer: clean(row.to_dict()) for layer, row in of_site.drop(columns="site").iterrows()},
        }
    return summary


def clean(figures: dict) -> dict:
    """JSON-ready: NaN as None, counts as int."""
    return {
        k: (None if isinstance(v, float) and np.isnan(v) else int(v) if k == "cells" else v) for k, v in figures.items()
    }


def atp_section(summary: dict) -> list[str]:
    """report.md's attribution-patching section: where the estimate can be trusted, per site and block."""
    found = summary.get("atp_validation")
    if found is None:
        return []
    lines = ["", "## Attribution patching (AtP)", ""]
    lines.append(
        "attributions.csv holds the AtP estimate of every encoder site, block and window (attributions.npz: every "
        "frame). "
    )
    maps = [f"![{site}, {d}]({map_file(site, d)})" for site in ENCODER_SITES for d in summary["directions"]]
    lines += [
        "",
        "The map per site and patch direction: the estimate of patching one frame of one block, mean over items "
        "(nats; red raises logp_source - logp_target).",
        "",
        " ".join(maps),
        "",
    ]
    if not found:
        lines.append("No cell was patched for real (add --model.validate true or --model.verify_top K).")
        return lines
    lines += [
        f"Beside real patching of the same cells (atp_validation.csv). Trusted where every block has Spearman >= "
        f"{TRUST_SPEARMAN} and sign agreement >= {TRUST_SIGN}.",
        "",
        f"| site | block | cells | Spearman | top-{TOP} recall | MAE (effect) | MAE (nats) | sign agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    for site, of_site in found.items():
        for layer, f in of_site.items():
            if layer == "trusted":
                continue
            values = [f["spearman"], f[f"top{TOP}_recall"], f["mae_effect"], f["mae_nats"], f["sign_agreement"]]
            lines.append(f"| {site} | {layer} | {f['cells']} | " + " | ".join(cell(v) for v in values) + " |")
    lines.append("")
    for site, of_site in found.items():
        weak = [
            layer
            for layer, f in of_site.items()
            if layer not in ("trusted", "all")
            and ((f["spearman"] or 0) < TRUST_SPEARMAN or (f["sign_agreement"] or 0) < TRUST_SIGN)
        ]
        verdict = "can be trusted" if of_site["trusted"] else f"is not to be trusted in block(s) {', '.join(weak)}"
        lines.append(f"- {site}: the estimate {verdict}; verify its cells by real patching before reporting them.")
    lines.append("")
    lines.append(" ".join(f"![{site}](figures/atp_validation_{site}.png)" for site in found))
    return lines
