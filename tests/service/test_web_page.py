"""The web page end to end: a real ``bert4rec serve`` process driven by headless Chromium.

The browser is Debian's ``chromium`` with its ``chromedriver`` (``.ci/chromium`` installs them;
``$BERT4REC_CHROMIUM`` and ``$BERT4REC_CHROMEDRIVER`` point elsewhere); nothing downloads one.
Without them the test is skipped, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TinyRun

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--no-first-run",
         "--window-size=1280,1800")
WAIT = 30.0  # seconds for anything the page does


def browser_paths() -> tuple[str, str]:
    chromium = (os.environ.get("BERT4REC_CHROMIUM") or shutil.which("chromium")
                or shutil.which("chromium-browser"))
    driver = os.environ.get("BERT4REC_CHROMEDRIVER") or shutil.which("chromedriver")
    problem = None
    if chromium is None or driver is None:
        problem = "Chromium and chromedriver are not installed (Debian: .ci/chromium)"
    else:
        try:
            import selenium  # noqa: F401
        except ImportError:
            problem = "selenium is not installed (pip install -e '.[dev]')"
    if problem is None:
        assert chromium is not None and driver is not None
        return chromium, driver
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the browser test must run in CI: {problem}")
    pytest.skip(problem)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``bert4rec serve`` on a free port with the run's users imported; its base URL."""
    folder = tmp_path_factory.mktemp("web")
    port = free_port()
    log = (folder / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "bert4rec", "serve", "--run", str(tiny_run.path), "--port",
         str(port), "--db", str(folder / "events.sqlite3"), "--import-history",
         str(tiny_run.log)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.close()
                pytest.fail("the service did not start:\n"
                            + (folder / "serve.log").read_text())
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, driver_path = browser_paths()
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options,
                              service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, condition: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(condition, f"waited for {what}")


def table_column(driver: Any, table: str, column: int) -> list[str]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")
    return [row.find_elements(By.TAG_NAME, "td")[column].text for row in rows]


def test_page_recommends_and_explains_in_chromium(server: str, browser: Any,
                                                  tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    driver.get(f"{server}/")
    assert driver.current_url == f"{server}/ui/"
    wait_for(driver, lambda d: "bert4rec model" in d.find_element(By.ID, "model-info").text,
             "the model description")

    # Pick a stored user: the history box fills with that user's stored items.
    stored = httpx.get(f"{server}/users/3/events").json()["items"]
    wait_for(driver, lambda d: len(Select(d.find_element(By.ID, "user-select")).options) > 1,
             "the stored users")
    Select(driver.find_element(By.ID, "user-select")).select_by_value("3")
    history = driver.find_element(By.ID, "history")
    wait_for(driver, lambda d: history.get_attribute("value") == " ".join(stored),
             "user 3's history")

    # Recommend: the page shows what the API answers.
    k = driver.find_element(By.ID, "k")
    k.clear()
    k.send_keys("5")
    driver.find_element(By.ID, "recommend").click()
    wait_for(driver, lambda d: len(table_column(d, "recommendations", 1)) == 5,
             "five recommendations")
    api = httpx.post(f"{server}/recommend", json={"history": stored, "k": 5}).json()
    assert table_column(driver, "recommendations", 1) == [str(r["item"]) for r in api["items"]]

    # Explain the first: the counterfactual table, the greedy set and both plots.
    first = api["items"][0]["item"]
    driver.find_element(By.CSS_SELECTOR, "#recommendations tbody tr button.explain").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "explanation").is_displayed()
             and d.find_element(By.ID, "explanation-title").text.startswith(f"Why {first}"),
             "the explanation")
    for image in ("plot-attribution", "plot-attention"):
        wait_for(driver, lambda d, i=image: d.execute_script(
            "const img = document.getElementById(arguments[0]);"
            "return img.complete && img.naturalWidth > 0;", i), f"the {image} image")
    explained = httpx.post(f"{server}/explain", json={"history": stored, "item": first,
                                                      "k": 5}).json()
    rows = sorted(explained["history"], key=lambda r: -r["score_drop"])
    assert table_column(driver, "attribution", 1) == [str(r["item"]) for r in rows]
    assert driver.find_element(By.ID, "counterfactual-set").text.startswith("Counterfactual set")
    driver.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").read_bytes()[:4] == b"\x89PNG"

    # An unknown item is skipped and said so; a history of unknown items gets popular items.
    history.clear()
    history.send_keys(f"not-an-item {stored[0]}")
    driver.find_element(By.ID, "recommend").click()
    wait_for(driver, lambda d: "not-an-item" in d.find_element(By.ID, "notes").text,
             "the skipped item")
    history.clear()
    history.send_keys("not-an-item")
    driver.find_element(By.ID, "recommend").click()
    wait_for(driver, lambda d: "most popular" in d.find_element(By.ID, "notes").text,
             "the popularity fallback")
    assert not driver.find_elements(By.CSS_SELECTOR, "#recommendations button.explain")

    # A request the service refuses shows its reason, not a broken page.
    k.clear()
    k.send_keys("5000")
    driver.find_element(By.ID, "recommend").click()
    wait_for(driver, lambda d: "less than or equal to" in d.find_element(By.ID, "error").text,
             "the refusal")

    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
              and "/recommend" not in e["message"]]  # the refused request above
    assert errors == []
