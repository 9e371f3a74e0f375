"""report.html: the page's data against the run's own files, offline, and a real browser clicking a cell.

The browser test drives headless Chromium (Debian's `chromium` and `chromium-driver`, through selenium); it is
skipped, saying so, where either is missing. `WPATCH_SCREENSHOT=path` keeps its screenshot; docs/images/
report_html.png, of a real run, is made with its helpers by scripts/report_screenshot.py.
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
from wpatch.analysis.html import cell_columns
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


def test_the_clean_transcripts_are_what_the_model_heard_of_each_clip(tmp_path, clip_dir):
    """clips/index.csv keeps each clip's clean transcript: under the whole block patched (block_out, window all,
    alpha 1) a diagonal cell's encoder output is the source clip's own, so its transcript is the source clip's
    clean one; an item's target clip is the other direction's source clip, so it was heard the same. On tiny.en,
    whose transcripts differ from clip to clip (the random model's do not)."""
    run = wpatch.run(
        PAIRS,
        model="tiny.en",
        tts="espeak",
        source_layers=[1],
        target_layers=[1],
        output_dir=tmp_path / "run",
        batch_size=4,
        cache_dir=clip_dir,
        progress=False,
    )
    index = pd.read_csv(run.path / "clips/index.csv", keep_default_na=False).set_index("item_id")
    assert index["source_heard"].nunique() == len(index), "each clip heard as something else"
    rows = run.rows
    diagonal = rows[rows.source_layer == rows.target_layer]
    assert len(diagonal) and (diagonal.transcript == index.loc[diagonal.item_id, "source_heard"].to_numpy()).all()
    heard = dict(zip(index.source_clip, index.source_heard))
    assert [heard[clip] for clip in index.target_clip] == index.target_heard.tolist()
    assert set(page_data(run)["items"]) >= {"source_heard", "target_heard"}


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


def test_the_page_is_titled_and_its_headings_go_down_from_one_h1(small_run):
    html = (small_run.path / "report.html").read_text()
    title = re.search(r"<title>(.*?)</title>", html)[1]
    assert title.startswith("wpatch run: ") and f"({small_run.path.name})" in title, title
    summary = small_run.summary
    assert f"{Path(summary['model']).name} on {Path(summary['pairs_file']).name}, 4 items x 9 layer pairs" in title
    levels = [int(level) for level in re.findall(r"<h([1-6])[ >]", html)]
    assert levels[0] == 1 and levels.count(1) == 1, levels
    assert all(b <= a + 1 for a, b in zip(levels, levels[1:])), levels


def test_window_all_marks_no_window(small_run):
    """The small run patches window `all`, the whole clip: no spectrogram gets a "patched window" box."""
    assert set(small_run.rows["window"]) == {"all"}
    assert all(cell["window"] is None for cell in page_data(small_run)["cells"].values())
    # a real window is marked: its [start, end) in encoder frames
    rows = small_run.rows.assign(window="word", window_start=10, window_end=30)
    cells, _ = cell_columns(rows, rows.drop_duplicates("item_id").sort_values("item_id"), ["score"])
    assert all(cell["window"] == [[10, 30]] * len(cell["item"]) for cell in cells.values())


def click_cell(browser, s: int, t: int):
    """Click heatmap cell (source s, target t): its pixel inside plotly's drag layer, from plotly's own axes."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    area = browser.find_element(By.CSS_SELECTOR, "#matrix .nsewdrag")
    x, y = browser.execute_script(
        "const l = document.getElementById('matrix')._fullLayout;return [l.xaxis.d2p(arguments[0]), "
        "l.yaxis.d2p(arguments[1])];",
        t,
        s,
    )
    size = area.size
    ActionChains(browser).move_to_element_with_offset(
        area, int(x - size["width"] / 2), int(y - size["height"] / 2)
    ).click().perform()


def listed(browser) -> list[int]:
    """The item ids the cell's table lists."""
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, "#cell table tr")[1:]
    return sorted(int(r.find_element(By.TAG_NAME, "td").text) for r in rows)


def loaded(browser):
    """Wait until every player of the cell's table has its clip's duration (loaded by itself: preload="metadata",
    under the page's policy) and shows it."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 10).until(
        lambda b: b.execute_script(
            "return [...document.querySelectorAll('#cell td')].every(td => !td.querySelector('audio') || "
            "td.querySelector('audio').duration > 0.1 && td.querySelector('.length').textContent)"
        )
    )


def test_browser_clicks_a_cell_and_gets_items_and_audio(small_run, tmp_path):
    """Clicking a cell lists its items with playable clips; the list, the heatmap's title and its mark on the
    clicked cell follow the measure and group menus."""
    browser, why = chromium()
    if browser is None:
        pytest.skip(why)
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    data, rows = page_data(small_run), small_run.rows
    measures, labels = [m for m, _ in data["measures"]], dict(data["measures"])
    cell = rows[(rows.source_layer == 1) & (rows.target_layer == 2)]
    model = Path(small_run.summary["model"]).name
    try:
        browser.get((small_run.path / "report.html").resolve().as_uri())
        WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#matrix .nsewdrag"))
        measure, group = Select(browser.find_element(By.ID, "measure")), Select(browser.find_element(By.ID, "group"))
        # it opens on effect and the recognised items where the run has them (the README's first reading)
        opened = measure.first_selected_option.get_attribute("value")
        assert opened == ("effect" if "effect" in measures else measures[0])
        assert group.first_selected_option.get_attribute("value") == (
            "recognised" if "recognised" in data["traces"] else next(iter(data["traces"]))
        )

        def heading() -> str:
            return browser.find_element(By.CSS_SELECTOR, "#matrix .gtitle").text

        group.select_by_value("all")
        assert heading() == f"{labels[opened]}, group all, {model}, 4 items"
        click_cell(browser, 1, 2)
        WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#cell table tr td"))
        title = browser.find_element(By.ID, "cell-title").text
        assert title.startswith("source layer 1 → target layer 2"), title
        rows_shown = browser.find_elements(By.CSS_SELECTOR, "#cell table tr")[1:]
        assert listed(browser) == sorted(cell.item_id)
        assert sorted(r.find_elements(By.TAG_NAME, "td")[5].text for r in rows_shown) == sorted(
            t.strip() for t in cell["transcript"]
        )
        # what the model heard of each clip, beside the clips: their clean transcripts (clips/index.csv)
        heads = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#cell th")]
        first = heads.index("source clip heard as")
        assert heads[first : first + 4] == [
            "source clip heard as",
            "target clip heard as",
            "source clip",
            "target clip",
        ]
        heard = pd.read_csv(small_run.path / "clips/index.csv", keep_default_na=False).set_index("item_id")
        for r in rows_shown:
            shown = [td.text for td in r.find_elements(By.TAG_NAME, "td")]
            item = int(shown[0])
            assert shown[first : first + 2] == [
                heard.loc[item, "source_heard"].strip(),
                heard.loc[item, "target_heard"].strip(),
            ]
        mark = "return document.getElementById('matrix')._fullLayout.shapes.map(s => [s.x0, s.y0, s.x1, s.y1]);"
        assert browser.execute_script(mark) == [[1.5, 0.5, 2.5, 1.5]], "the clicked cell is marked"
        audios = browser.find_elements(By.CSS_SELECTOR, "#cell audio")
        assert len(audios) == 2 * len(cell)
        # the players load their clips' durations by themselves (preload="metadata"), under the page's policy
        loaded(browser)
        lengths = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#cell .length")]
        assert len(lengths) == len(audios) and all(re.fullmatch(r"\d+\.\d\d s", t) for t in lengths), lengths
        assert not browser.find_elements(By.CSS_SELECTOR, "#cell .mel .window"), "window all marks no window"
        # each spectrogram has a time axis from 0 s to at most its clip's length (10 ms log-mel frames)
        index = pd.read_csv(small_run.path / "clips/index.csv").set_index("item_id")
        row = browser.find_elements(By.CSS_SELECTOR, "#cell table tr")[1]
        ticks = [e.text for e in row.find_element(By.CSS_SELECTOR, ".axis").find_elements(By.TAG_NAME, "span")]
        seconds = index.loc[int(row.find_element(By.TAG_NAME, "td").text), "source_frames"] / 100
        assert ticks[0] == "0 s" and len(ticks) >= 2 and float(ticks[-1]) <= seconds, (ticks, seconds)
        # the list follows the group and the measure; the mark stays on the clicked cell
        consonant = sorted(cell.loc[cell.category == "consonant", "item_id"])
        group.select_by_value("category=consonant")
        assert listed(browser) == consonant and len(consonant) < len(cell)
        assert "group category=consonant: " in browser.find_element(By.ID, "cell-title").text
        assert f"group category=consonant, {model}, 2 items" in heading()
        other = next(m for m in measures if m != opened)
        measure.select_by_value(other)
        assert listed(browser) == consonant and heading().startswith(labels[other] + ", group category=consonant")
        assert browser.find_element(By.CSS_SELECTOR, "#cell th.shown").text == other
        assert browser.execute_script(mark) == [[1.5, 0.5, 2.5, 1.5]]
        if "recognised" in data["traces"]:
            group.select_by_value("recognised")
            assert listed(browser) == sorted(cell.loc[cell.source_recognised, "item_id"])
        shot = Path(os.environ.get("WPATCH_SCREENSHOT", tmp_path / "report.png"))
        group.select_by_value("all")
        loaded(browser)
        ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()  # no hover box
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        browser.quit()
