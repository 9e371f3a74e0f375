"""report.html: the page's data against the run's own files, offline, and a real browser clicking a cell.

The browser test drives headless Chromium (Debian's `chromium` and `chromium-driver`, through selenium); it is
skipped, saying so, where either is missing. `WPATCH_SCREENSHOT=path` keeps its screenshot (docs/images/
report_html.png is made this way).
"""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import markdown
import pandas as pd
import pytest

import wpatch
from wpatch.analysis.markdown_html import markdown_html
from wpatch.analysis.tables import read_matrix

PAIRS = pd.DataFrame({"word_a": ["bat", "hot"], "word_b": ["pat", "cold"], "category": ["consonant", "semantic"]})


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, small_model_path, clip_dir):
    """A 2-pair run of the small random Whisper (3 x 3 layer pairs, 4 items) with espeak clips, from Python."""
    out = tmp_path_factory.mktemp("html") / "run"
    return wpatch.run(
        PAIRS,
        model=small_model_path,
        tts="espeak",
        output_dir=out,
        max_tokens=3,
        batch_size=2,
        cache_dir=clip_dir,
        progress=False,
    )


def page_data(run) -> dict:
    html = (run.path / "report.html").read_text()
    return json.loads(re.search(r'<script type="application/json" id="wpatch-data">(.*?)</script>', html, re.S)[1])


def test_page_is_offline_and_its_numbers_are_the_runs(small_run):
    html = (small_run.path / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the page must fetch nothing from the network"
    assert (small_run.path / "plotly.min.js").stat().st_size > 1_000_000
    data, rows = page_data(small_run), small_run.rows
    for group in ("all", "recognised"):
        for measure, _ in data["measures"]:
            trace, matrix = data["traces"].get(group, {}).get(measure), read_matrix(small_run.matrices, measure, group)
            if trace is None:
                assert matrix.empty or not matrix.notna().any().any()
                continue
            assert trace["x"] == list(matrix.columns) and trace["y"] == list(matrix.index)
            assert pd.DataFrame(trace["z"]).to_numpy() == pytest.approx(matrix.round(4).to_numpy(), nan_ok=True)
    # every cell lists each item once, with the measures and transcript of its row in predictions.csv
    items = data["items"]
    for key, cell in data["cells"].items():
        s, t = map(int, key.split(","))
        expected = rows[(rows.source_layer == s) & (rows.target_layer == t)].set_index("item_id")
        ids = [items["item_id"][i] for i in cell["item"]]
        assert sorted(ids) == sorted(expected.index)
        assert [data["transcripts"][k] for k in cell["transcript"]] == list(expected.loc[ids, "transcript"])
        assert cell["score"] == pytest.approx(list(expected.loc[ids, "score"].round(4)))
        assert cell["score"] and pytest.approx(sum(cell["score"]) / len(ids), abs=1e-3) == expected["score"].mean()
    recognised = sorted(rows.loc[rows.source_recognised, "item_id"].unique())
    assert sorted(items["item_id"][i] for i in data["groups"].get("recognised", [])) == recognised


def test_clips_are_in_the_folder_by_content_hash(small_run):
    index = pd.read_csv(small_run.path / "clips/index.csv")
    assert sorted(index.item_id) == sorted(small_run.rows.item_id.unique())
    for name in set(index.source_clip) | set(index.target_clip):
        clip = small_run.path / "clips" / name
        assert hashlib.sha256(clip.read_bytes()).hexdigest()[:16] == clip.stem
        assert clip.with_suffix(".png").exists()
    # an item's source clip is the other direction's target clip
    by_item = small_run.rows.drop_duplicates("item_id").set_index("item_id")
    clip_of = {}
    for row in index.itertuples():
        for side in ("source", "target"):
            word = by_item.loc[row.item_id, f"{side}_word"]
            assert clip_of.setdefault(word, getattr(row, f"{side}_clip")) == getattr(row, f"{side}_clip")


def test_the_report_renders_as_plain_markdown_when_it_holds_no_html(small_run):
    """The report part of the page is markdown's own rendering (tables, headings, figures), only without raw HTML."""
    text = (small_run.path / "report.md").read_text()
    assert "<table>" in markdown_html(text) and "<h2>" in markdown_html(text)
    assert markdown_html(text) == markdown.markdown(text, extensions=["tables"])


def test_run_again_writes_the_page_again(small_run):
    (small_run.path / "report.html").unlink()
    assert small_run.report() == small_run.path / "report.html"
    assert (small_run.path / "report.html").exists()


def chromium():
    """A headless Chromium driven by selenium, or the reason there is none."""
    try:
        from selenium import webdriver
    except ImportError:
        return None, "selenium is not installed (pip install 'wpatch[test]')"
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        return None, "no Chromium here (Debian: apt-get install chromium chromium-driver; .ci/run installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1200"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(options=options, service=Service(driver)), None


def test_browser_clicks_a_cell_and_gets_items_and_audio(small_run, tmp_path):
    browser, why = chromium()
    if browser is None:
        pytest.skip(why)
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        browser.get((small_run.path / "report.html").resolve().as_uri())
        WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#matrix .nsewdrag"))
        # the pixel of cell (source 1, target 2) inside plotly's drag layer, from plotly's own axes
        area = browser.find_element(By.CSS_SELECTOR, "#matrix .nsewdrag")
        x, y = browser.execute_script(
            "const l = document.getElementById('matrix')._fullLayout;return [l.xaxis.d2p(2), l.yaxis.d2p(1)];"
        )
        size = area.size
        ActionChains(browser).move_to_element_with_offset(
            area, int(x - size["width"] / 2), int(y - size["height"] / 2)
        ).click().perform()
        WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#cell table tr td"))
        title = browser.find_element(By.ID, "cell-title").text
        assert title.startswith("source layer 1 → target layer 2"), title
        rows = browser.find_elements(By.CSS_SELECTOR, "#cell table tr")[1:]
        expected = small_run.rows[(small_run.rows.source_layer == 1) & (small_run.rows.target_layer == 2)]
        assert len(rows) == len(expected)
        assert sorted(r.find_elements(By.TAG_NAME, "td")[5].text for r in rows) == sorted(
            t.strip() for t in expected["transcript"]
        )
        audios = browser.find_elements(By.CSS_SELECTOR, "#cell audio")
        assert len(audios) == 2 * len(expected)
        duration = browser.execute_async_script(
            "const done = arguments[arguments.length - 1], a = document.querySelector('#cell audio');"
            "a.addEventListener('loadedmetadata', () => done(a.duration));"
            "a.addEventListener('error', () => done(-1)); a.preload = 'metadata'; a.load();"
        )
        assert duration > 0.1, "the clip's audio must load and play"
        shot = Path(os.environ.get("WPATCH_SCREENSHOT", tmp_path / "report.png"))
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        browser.quit()
