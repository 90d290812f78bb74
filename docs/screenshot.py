"""Screenshot of the service's web page explaining a recommendation (``docs/img/web-page.png``).

    python docs/screenshot.py --run runs/ml-1m-cpu --data ../shared/data/ml-1m/ml-1m.txt \\
        --user 42 --output docs/img/web-page.png

Starts ``bert4rec serve`` on the run with the log's users imported into a temporary store,
opens the page in Debian's headless Chromium (``.ci/chromium``), picks the user, asks for the
top 10, presses *Why?* on the first and saves the page.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--no-first-run",
         "--hide-scrollbars")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--data", required=True, help="the run's training log")
    parser.add_argument("--user", default="42")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--output", type=Path, default=Path("docs/img/web-page.png"))
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as folder:
        server = subprocess.Popen(
            [sys.executable, "-m", "bert4rec", "serve", "--run", str(args.run), "--port",
             str(port), "--db", f"{folder}/events.sqlite3", "--import-history", args.data])
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "chromium"
        for flag in (*FLAGS, f"--window-size={args.width},1000"):
            options.add_argument(flag)
        service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
        driver = webdriver.Chrome(options=options, service=service)
        wait = WebDriverWait(driver, 120, poll_frequency=0.2)
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            driver.get(url)
            wait.until(lambda d: len(Select(d.find_element(By.ID, "user-select")).options) > 1)
            field = driver.find_element(By.ID, "user-id")
            field.send_keys(args.user)
            driver.find_element(By.ID, "load-user").click()
            wait.until(lambda d: d.find_element(By.ID, "history").get_attribute("value"))
            driver.find_element(By.ID, "recommend").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "button.explain"))
            driver.find_element(By.CSS_SELECTOR, "button.explain").click()
            wait.until(lambda d: d.execute_script(
                "const a = document.getElementById('plot-attribution');"
                "const b = document.getElementById('plot-attention');"
                "return a.complete && a.naturalWidth > 0 && b.complete && b.naturalWidth > 0;"))
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(args.width, height + 40)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.output))
            print(f"wrote {args.output} ({args.width}x{height})")
        finally:
            driver.quit()
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
