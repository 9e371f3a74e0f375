"""report.html's size and load time for a run as large as Experiment A on all 869 pairs, measured in headless
Chromium.

    python -m scripts.report_page RUN_DIR OUT_DIR [--pairs 869]

RUN_DIR is a finished small run of the default settings (e.g. `wpatch.run(pairs="starter", limit=1)`); its rows
are repeated with new item and pair ids (and random measures) up to PAIRS pairs x 2 directions, analysed into
OUT_DIR (`wpatch.analysis.analyse`, which writes report.html), with clips/index.csv pointing every item at the
small run's clips. Prints the page's size, the time Chromium takes to load it and draw the heatmap, and the time
from a click on a cell to its item table.
"""

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from wpatch.analysis.summary import analyse
from wpatch.analysis.tables import read_rows_and_summary


def large_rows(small: pd.DataFrame, pairs: int, seed: int = 0) -> pd.DataFrame:
    """`small`'s rows repeated for `pairs` pairs (both directions), with random measures and transcripts."""
    rng = np.random.default_rng(seed)
    per_item = small[small["item_id"] == small["item_id"].min()]
    out = []
    for pair in range(pairs):
        for direction, item in (("a->b", 2 * pair), ("b->a", 2 * pair + 1)):
            rows = per_item.assign(item_id=item, pair_id=f"p{pair:04d}", direction=direction)
            rows = rows.assign(source_word=f"word{item}", target_word=f"word{item ^ 1}")
            rows["category"] = ("consonant", "vowel", "semantic")[pair % 3]
            out.append(rows)
    rows = pd.concat(out, ignore_index=True)
    n = len(rows)
    rows["score"] = rng.random(n)
    rows["override"] = rng.random(n) < rows["score"]
    rows["transcript"] = np.where(rows["override"], rows["source_word"], rows["target_word"])
    recognised = rng.random(2 * pairs) < 0.75
    rows["source_recognised"] = recognised[rows["item_id"]]
    rows["effect"] = rng.normal(0.5, 0.4, n)
    rows["effect_valid"] = True
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--pairs", type=int, default=869)
    options = parser.parse_args(argv)
    small, out = Path(options.run_dir), Path(options.out_dir)
    shutil.rmtree(out, ignore_errors=True)
    rows = large_rows(read_rows_and_summary(small)[0], options.pairs)
    (out / "clips").mkdir(parents=True)
    index = pd.read_csv(small / "clips/index.csv")
    for name in set(index["source_clip"]) | set(index["target_clip"]):
        for suffix in (Path(name).suffix, ".png"):
            shutil.copy(small / "clips" / Path(name).with_suffix(suffix), out / "clips")
    first = index.iloc[0]
    items = pd.DataFrame({"item_id": sorted(rows["item_id"].unique())})
    for column in ("source_clip", "source_frames", "target_clip", "target_frames"):
        items[column] = first[column]
    items.to_csv(out / "clips/index.csv", index=False)
    start = time.perf_counter()
    analyse(rows, out, tensorboard=False)
    print(f"{len(rows)} rows analysed in {time.perf_counter() - start:.0f} s")
    page = out / "report.html"
    sizes = [(out / name).stat().st_size / 2**20 for name in ("report.html", "plotly.min.js")]
    print(f"report.html {sizes[0]:.2f} MiB, plotly.min.js {sizes[1]:.2f} MiB")

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_report_html import chromium

    browser, why = chromium()
    if browser is None:
        raise SystemExit(why)
    try:
        for attempt in range(3):
            start = time.perf_counter()
            browser.get(page.resolve().as_uri())
            WebDriverWait(browser, 120).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#matrix .nsewdrag"))
            drawn = time.perf_counter() - start
            load = browser.execute_script(
                "const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd;"
            )
            area = browser.find_element(By.CSS_SELECTOR, "#matrix .nsewdrag")
            x, y = browser.execute_script(
                "const l = document.getElementById('matrix')._fullLayout; return [l.xaxis.d2p(2), l.yaxis.d2p(1)];"
            )
            start = time.perf_counter()
            ActionChains(browser).move_to_element_with_offset(
                area, int(x - area.size["width"] / 2), int(y - area.size["height"] / 2)
            ).click().perform()
            WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#cell table tr td"))
            clicked = time.perf_counter() - start
            shown = len(browser.find_elements(By.CSS_SELECTOR, "#cell table tr")) - 1
            nodes = browser.execute_script("return document.getElementsByTagName('*').length")
            print(
                f"load {attempt + 1}: load event {load / 1000:.2f} s, heatmap drawn {drawn:.2f} s; click to table "
                f"{clicked:.2f} s ({shown} item rows shown); {nodes} elements in the page"
            )
    finally:
        browser.quit()


if __name__ == "__main__":
    main()
