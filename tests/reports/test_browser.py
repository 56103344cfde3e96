"""The HTML leaderboard in a real browser (headless Chromium through chromedriver, one session for the module):
nothing leaves the page, hostile outputs show as text and never run, sorting reorders rows, the sample viewer
shows the chosen document's predictions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.reports import write_leaderboard
from tests.reports.test_leaderboard import sample, write_result

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
    reason="Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")

HOSTILE = ['<script>window.pwned = "script"</script>', '<img src="x" onerror="window.pwned = \'onerror\'">']


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser") / "runs"
    predictions = {"teacher": ["T0", "T1", HOSTILE[0], "T3"], "sft": ["S0", HOSTILE[1], "S2", "S3"]}
    for model, rouge in (("teacher", 40.0), ("sft", 30.0)):
        write_result(root, model, "dolly", {"rougeL": rouge, "rougeL_stderr": 1.0},
                     samples=[sample(i, text) for i, text in enumerate(predictions[model])])
        write_result(root, model, "self_inst", {"rougeL": 70.0 - rouge})
    for step, rouge in ((100, 20.0), (200, 25.0)):
        write_result(root, f"minillm__step-{step}", "dolly", {"rougeL": rouge}, model="student",
                     training={"method": "minillm", "step": step})
        write_result(root, f"minillm__step-{step}", "self_inst", {"rougeL": rouge}, model="student",
                     training={"method": "minillm", "step": step})
    return write_leaderboard(root)[1]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def requests_sent(browser, url: str) -> list[str]:
    """Every URL the page asked for while loading `url` (the performance log's Network.requestWillBeSent)."""
    browser.get_log("performance")  # drop what earlier pages logged
    browser.get(url)
    browser.execute_script("return document.readyState")
    found = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            found.append(message["params"]["request"]["url"])
    return found


def test_no_request_leaves_the_page(browser, page: Path, tmp_path: Path) -> None:
    # The log sees a remote load when a page makes one (a bare page with a remote image, no policy) ...
    control = tmp_path / "control.html"
    control.write_text('<img src="http://192.0.2.1/pixel.png">')
    assert any(url.startswith("http://192.0.2.1/") for url in requests_sent(browser, control.as_uri()))
    # ... and the leaderboard, with its figures and hostile samples, asks for nothing but itself and data: URIs.
    sent = requests_sent(browser, page.as_uri())
    assert page.as_uri() in sent
    assert all(url == page.as_uri() or url.startswith("data:") for url in sent), sent


def choose(browser, viewer, model: str, doc: str, column: int = 0) -> str:
    """Pick `doc` and, in the given column, `model`; returns the shown column's text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    if viewer.get_attribute("open") is None:
        viewer.find_element(By.TAG_NAME, "summary").click()
    Select(viewer.find_element(By.CSS_SELECTOR, "select.doc")).select_by_value(doc)
    columns = viewer.find_elements(By.CSS_SELECTOR, ".column")
    Select(columns[column].find_element(By.CSS_SELECTOR, "select.model")).select_by_value(model)
    return columns[column].find_element(By.CSS_SELECTOR, ".shown").text


def test_hostile_outputs_show_as_text_and_never_run(browser, page: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(page.as_uri())
    viewer = browser.find_element(By.CSS_SELECTOR, ".viewer")
    assert HOSTILE[0] in choose(browser, viewer, "teacher", "2")
    assert HOSTILE[1] in choose(browser, viewer, "sft", "1", column=1)
    assert browser.execute_script("return typeof window.pwned") == "undefined"
    assert not browser.find_elements(By.CSS_SELECTOR, ".viewer img")  # no element was made from the text


def test_sample_viewer_shows_the_chosen_documents_predictions(browser, page: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(page.as_uri())
    viewer = browser.find_element(By.CSS_SELECTOR, ".viewer")
    shown = choose(browser, viewer, "sft", "3")
    assert "S3" in shown and "S2" not in shown and "A reference poem." in shown and "second try" in shown
    shown = choose(browser, viewer, "teacher", "0", column=1)
    assert "T0" in shown and "T3" not in shown
    viewer.find_element(By.CSS_SELECTOR, 'button.step[data-step="1"]').click()  # next document
    assert "T1" in viewer.find_elements(By.CSS_SELECTOR, ".column .shown")[1].text
    assert "S1" not in viewer.find_elements(By.CSS_SELECTOR, ".column .shown")[0].text


def test_sorting_a_column_reorders_rows_and_checkpoints_follow(browser, page: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(page.as_uri())
    table = browser.find_elements(By.CSS_SELECTOR, "section")[1].find_element(By.TAG_NAME, "table")  # instruct

    def names() -> list[str]:
        return [row.find_element(By.TAG_NAME, "td").get_attribute("textContent").split("+")[0].strip()
                for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")]

    # By the instruct average (teacher 35, sft 35, minillm@200 25): the page's own order.
    assert names() == ["sft", "teacher", "minillm@200", "minillm@100"]
    dolly = table.find_elements(By.CSS_SELECTOR, "thead th")[2]
    dolly.click()  # highest dolly ROUGE-L first
    assert names() == ["teacher", "sft", "minillm@200", "minillm@100"]
    dolly.click()  # lowest first; the earlier checkpoint stays behind its method's row
    assert names() == ["minillm@200", "minillm@100", "sft", "teacher"]
    hidden = table.find_elements(By.CSS_SELECTOR, "tr.checkpoint")
    assert [row.is_displayed() for row in hidden] == [False]
    table.find_element(By.CSS_SELECTOR, "button.expand").click()
    assert [row.is_displayed() for row in hidden] == [True]
