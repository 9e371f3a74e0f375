"""A screenshot of a run's report.html after a click on one cell, taken in headless Chromium (as the page's browser
test drives it): the page opens on its own measure and group, the cell's item table is listed, and the shot is
taken once every player shows its clip's length.

    python -m scripts.report_screenshot RUN_DIR OUT.png [--cell S T]

docs/images/report_html.png was made so from a tiny.en run (see docs/compare.md).
"""

import argparse
from pathlib import Path

from tests.test_report_html import chromium, click_cell, loaded


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("out")
    parser.add_argument("--cell", type=int, nargs=2, default=(2, 0), metavar=("S", "T"), help="source, target layer")
    options = parser.parse_args(argv)

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser, why = chromium()
    if browser is None:
        raise SystemExit(why)
    try:
        browser.get((Path(options.run_dir) / "report.html").resolve().as_uri())
        WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#matrix .nsewdrag"))
        click_cell(browser, *options.cell)
        WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#cell table tr td"))
        loaded(browser)
        ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()  # no hover box
        browser.save_screenshot(str(options.out))
    finally:
        browser.quit()
    print(options.out)


if __name__ == "__main__":
    main()
