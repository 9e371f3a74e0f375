"""report.html runs nothing that comes from the data: a pairs file with markup in every text column and in its own
name gives a page that shows that markup as text, opens no dialog in Chromium and holds only its own elements.

The escaping itself is tested without a browser (`markdown_html`, and the page parsed as HTML); the browser test is
skipped where Chromium is missing, like tests/test_report_html.py's.
"""

import base64
import hashlib
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import soundfile

import wpatch
from tests.test_report_html import chromium
from wpatch.analysis.markdown_html import markdown_html

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "</script><script>alert(2)</script>",
    '"><svg onload=alert(3)>',
    "[x](javascript:alert(4))",
]
FILE_NAME = '"><svg onload=alert(5)><img src=x onerror=alert(6)>[x](javascript:alert(7))'  # no "/" in a name


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, small_model_path, clip_dir):
    """A run of the small random Whisper whose pairs file has a hostile value in every text column (a synthesised
    pair in a carrier sentence, a recorded pair with speakers, corpus, licence and a context) and in the names of
    the pairs file, the recordings and the run's folder."""
    folder = tmp_path_factory.mktemp("hostile")
    rate = 16000
    noise = 0.1 * np.random.default_rng(0).standard_normal(rate).astype(np.float32)
    for side in "ab":
        soundfile.write(folder / f"{side}{HOSTILE[0]}.wav", noise, rate)
    h = HOSTILE
    pairs = pd.DataFrame(
        {
            "pair_id": [h[0], h[1]],
            "word_a": [f"bat{h[0]}", f"hot{h[2]}"],
            "word_b": [f"pat{h[1]}", f"cold{h[3]}"],
            "category": [h[0], h[3]],
            "carrier": [f"{h[1]} {{}} {h[2]}", ""],
            "audio_a": ["", f"a{h[0]}.wav"],
            "audio_b": ["", f"b{h[0]}.wav"],
            "start_a": ["", "0.2"],
            "end_a": ["", "0.6"],
            "start_b": ["", "0.2"],
            "end_b": ["", "0.6"],
            "context_a": ["", f"{h[1]} {{}} {h[3]}"],
            "context_b": ["", f"{h[2]} {{}} {h[0]}"],
            "speaker_a": ["", h[1]],
            "speaker_b": ["", h[2]],
            "corpus": ["", h[3]],
            "licence": ["", h[0]],
        }
    )
    path = folder / f"{FILE_NAME}.csv"
    pairs.to_csv(path, index=False)
    return wpatch.run(
        str(path),
        model=small_model_path,
        tts="espeak",
        output_dir=folder / HOSTILE[0].replace("/", ""),
        max_tokens=3,
        batch_size=2,
        cache_dir=clip_dir,
        progress=False,
    )


def test_markdown_shows_html_as_text_and_links_only_into_the_folder():
    for value in HOSTILE:
        page = markdown_html(f"# {value}\n\n| a | b |\n|---|---|\n| {value} | {value} |\n\n- {value}\n\n{value}\n")
        assert not re.search(r"<(img|svg|script)|javascript:", page), page
    assert "&lt;img src=x onerror=alert(1)&gt;" in markdown_html(HOSTILE[0])
    assert markdown_html("<div>\n<script>alert(1)</script>\n</div>") == (
        "<p>&lt;div&gt;\n&lt;script&gt;alert(1)&lt;/script&gt;\n&lt;/div&gt;</p>"
    )
    # links and images keep their text but lose any target outside the folder, however the URL is spelled
    for url in (
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "java\tscript:alert(1)",
        "&#106;avascript:alert(1)",
        "&#x6A;avascript:alert(1)",
        "data:text/html,x",
        "//example.com/x.png",
        "\\\\example.com/x.png",
        "/etc/passwd",
        "https://example.com/x.png",
    ):
        for text in (f"[x]({url})", f"![x]({url})", f"[x][r]\n\n[r]: {url}"):
            assert not re.search(r"(href|src)=", markdown_html(text)), (text, markdown_html(text))
    assert markdown_html("<me@example.com> <https://example.com>") == (
        "<p><a>&#109;&#101;&#64;&#101;&#120;&#97;&#109;&#112;&#108;&#101;&#46;&#99;&#111;&#109;</a> "
        "<a>https://example.com</a></p>"
    )
    assert markdown_html("![m](figures/score_matrix.png)") == '<p><img alt="m" src="figures/score_matrix.png" /></p>'


class Elements(HTMLParser):
    """The start tags of a page with their attributes, and the text of its inline scripts and styles."""

    def __init__(self, page: str):
        super().__init__()
        self.tags, self.inline, self.last = [], [], None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.last = tag

    def handle_data(self, data):
        if self.last in ("script", "style") and self.tags[-1][0] == self.last and "src" not in self.tags[-1][1]:
            self.inline.append((self.last, self.tags[-1][1].get("type"), data))
        self.last = None


def csp_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_page_holds_only_its_own_elements_and_policy(hostile_run):
    page = (hostile_run.path / "report.html").read_text()
    found = Elements(page)
    assert [t for t, _ in found.tags if t in ("script", "svg", "iframe", "object", "embed")] == ["script"] * 3
    assert all(not k.startswith("on") for _, attrs in found.tags for k in attrs), "no event handler attributes"
    assert not [a for t, a in found.tags if t == "img" and not a.get("src", "").startswith("figures/")]
    assert not [a for t, a in found.tags if t == "a" and "href" in a]
    # the data's markup is there as text: in the report (escaped) and in the page's data (JSON, `<` escaped)
    assert "category=&lt;img src=x onerror=alert(1)&gt;" in page and "\\u003c/script\\u003e" in page
    assert page.count("</script>") == 3
    policy = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', page)[1]
    assert "default-src 'none'" in policy and "unsafe" not in policy and "http" not in policy
    styles = [text for tag, _, text in found.inline if tag == "style"]
    scripts = [text for tag, kind, text in found.inline if tag == "script" and kind != "application/json"]
    assert len(styles) == len(scripts) == 1
    assert csp_source(styles[0]) in policy.split("style-src")[1].split(";")[0]
    assert csp_source(scripts[0]) in policy.split("script-src")[1].split(";")[0]


def test_browser_opens_no_dialog_and_finds_no_injected_element(hostile_run):
    browser, why = chromium()
    if browser is None:
        pytest.skip(why)
    from selenium.common.exceptions import NoAlertPresentException, UnexpectedAlertPresentException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def no_dialog():
        try:
            text = browser.switch_to.alert.text
        except NoAlertPresentException:
            return
        pytest.fail(f"the page opened a dialog: {text!r}")

    try:
        browser.get((hostile_run.path / "report.html").resolve().as_uri())
        no_dialog()
        WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#matrix .nsewdrag"))
        area = browser.find_element(By.CSS_SELECTOR, "#matrix .nsewdrag")
        x, y = browser.execute_script(
            "const l = document.getElementById('matrix')._fullLayout;return [l.xaxis.d2p(1), l.yaxis.d2p(1)];"
        )
        ActionChains(browser).move_to_element_with_offset(
            area, int(x - area.size["width"] / 2), int(y - area.size["height"] / 2)
        ).click().perform()
        WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#cell table tr td"))
        browser.execute_script("document.getElementById('group').selectedIndex = 1;")  # a hostile category's group
        no_dialog()
        words = {td.text for td in browser.find_elements(By.CSS_SELECTOR, "#cell td")}
        assert {"bat" + HOSTILE[0], "pat" + HOSTILE[1], "hot" + HOSTILE[2], "cold" + HOSTILE[3]} <= words
        assert HOSTILE[0] in browser.find_element(By.ID, "report").text
        injected = browser.execute_script(
            "return [...document.querySelectorAll('*')].filter(e => e.matches('img[src=x], svg[onload]') ||"
            " [...e.attributes].some(a => a.name.startsWith('on') ||"
            " /^\\s*javascript:/i.test(a.value))).map(e => e.outerHTML)"
        )
        assert injected == []
        scripts = browser.execute_script("return [...document.scripts].map(s => [s.src.split('/').pop(), s.type])")
        assert scripts == [["plotly.min.js", ""], ["", "application/json"], ["", ""]]
        # under the page's policy its own figures still load
        figures = browser.execute_script(
            "return [...document.querySelectorAll('#report img')].map(i => i.naturalWidth)"
        )
        assert figures and all(width > 0 for width in figures)
        no_dialog()
    except UnexpectedAlertPresentException as error:
        pytest.fail(f"the page opened a dialog: {error.alert_text!r}")
    finally:
        browser.quit()
