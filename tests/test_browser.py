"""The web UI in a real Chromium (Debian's `chromium` and `chromium-driver`, driven by
Selenium; `.ci/run` installs them). A served deployment, a server and the flows that fill
the store each run in processes of their own, as they would for a user.

Screenshots go to build/screenshots/ (CI keeps them as artifacts; the README shows two).
Without Chromium these tests are skipped, except in CI, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "build" / "screenshots"
CHROMIUM = os.environ.get("ASYNCFLOW_TEST_CHROMIUM") or shutil.which("chromium") or ""
DRIVER = os.environ.get("ASYNCFLOW_TEST_CHROMEDRIVER") or shutil.which("chromedriver") or ""
WAIT = 60  # seconds a page gets to show what the test waits for

SCRIPT = textwrap.dedent(
    """
    import sys
    import time

    from asyncflow import flow, task


    @task
    def step(i: int) -> int:
        time.sleep(0.1 + 0.1 * (i % 3))
        return i


    @flow
    def inner(n: int) -> int:
        return sum(step.map(range(n)).result())


    @flow
    def outer(n: int = 3) -> int:
        return inner(n) + step(n)


    @flow
    def fragile() -> None:
        raise RuntimeError("the upstream API answered 503")


    if __name__ == "__main__":
        if sys.argv[1] == "record":
            outer(int(sys.argv[2]))
            if sys.argv[2] == "3":
                try:
                    fragile()
                except RuntimeError:
                    pass
        else:
            outer.serve(name="ui")
    """
)


def _missing() -> str | None:
    if not (CHROMIUM and DRIVER):
        return "no chromium/chromedriver (Debian: apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the [dev] extra has it)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests need Chromium in CI: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


def _until(what: str, check: Any, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except Exception:  # (a server still starting, an element not there yet)
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A store with a recorded run tree, a process serving `outer/ui`, and a server."""
    if _missing() and not os.environ.get("CI"):
        pytest.skip(_missing() or "")
    home = tmp_path_factory.mktemp("browser")
    script = home / "flows.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "ASYNCFLOW_HOME": str(home / "home"),
        "ASYNCFLOW_STORE": f"sqlite://{home / 'runs.db'}",
        "ASYNCFLOW_LOGGING_LEVEL": "WARNING",
    }
    env.pop("ASYNCFLOW_SERVER_TOKEN", None)
    subprocess.run([sys.executable, str(script), "record", "3"], env=env, check=True, timeout=120)
    port = _port()
    procs = [
        subprocess.Popen([sys.executable, str(script), "serve"], env=env, cwd=home),
        subprocess.Popen(
            [sys.executable, "-m", "asyncflow.cli", "server", "start", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL,
        ),
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _until("the server", lambda: _get(f"{base}/api/health"))
        _until("the deployment", lambda: _get(f"{base}/api/deployments")["deployments"])
        yield {"base": base, "env": env, "script": script}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _shot(driver: Any, name: str) -> None:
    """The whole page, not only the window's part of it."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": min(int(size["height"]), 4000), "deviceScaleFactor": 1,
         "mobile": False},
    )  # fmt: skip
    driver.save_screenshot(str(SHOTS / name))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_runs_page_parent_and_child_links_and_the_timeline(
    browser: Any, site: dict[str, Any]
) -> None:
    from selenium.webdriver.common.by import By

    base = site["base"]
    top = next(r for r in _get(f"{base}/api/runs")["runs"] if r["spec_name"] == "outer")
    browser.get(f"{base}/runs")
    assert browser.title.startswith("Runs")
    browser.find_element(By.LINK_TEXT, top["name"]).click()
    _until("the parent run's page", lambda: top["id"] in browser.current_url)
    # The parent draws a bar for its subflow and one for its own task.
    bars = browser.find_elements(By.CSS_SELECTOR, ".timeline .bar.s-completed")
    assert len(bars) == 2 and all(bar.size["width"] >= 2 for bar in bars)
    _shot(browser, "run.png")
    child = browser.find_element(By.CSS_SELECTOR, "a.child-flow")
    child_name = child.text
    child.click()
    _until("the child run's page", lambda: browser.title.startswith(child_name))
    back = browser.find_element(By.ID, "parent-link")
    assert back.get_attribute("href").endswith(f"/runs/{top['id']}")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".timeline .bar")) == 3  # its 3 steps
    back.click()
    _until("the parent again", lambda: top["id"] in browser.current_url)


def test_the_runs_page_refreshes_without_reloading(browser: Any, site: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    base = site["base"]
    browser.get(f"{base}/runs?flow=outer")
    before = len(browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr"))
    browser.execute_script("window.notReloaded = true")
    subprocess.run(
        [sys.executable, str(site["script"]), "record", "1"], env=site["env"], check=True,
        timeout=120,
    )  # fmt: skip
    rows = _until(
        "the new run on the page",
        lambda: len(browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")) > before,
    )
    assert rows and browser.execute_script("return window.notReloaded") is True


def test_a_run_started_from_the_form_reaches_completed_live(
    browser: Any, site: dict[str, Any]
) -> None:
    from selenium.webdriver.common.by import By

    base = site["base"]
    browser.get(f"{base}/deployments")
    browser.find_element(By.LINK_TEXT, "outer/ui").click()
    _until("the deployment page", lambda: browser.title.startswith("outer/ui"))
    field = browser.find_element(By.ID, "p-n")
    field.clear()
    field.send_keys("4")
    browser.find_element(By.ID, "run-button").click()
    _until("the new run's page", lambda: "/runs/" in browser.current_url)
    browser.execute_script("window.notReloaded = true")

    def state() -> str:
        return str(browser.find_element(By.CSS_SELECTOR, "#run h1 .badge").text)

    _until("the run to reach Completed", lambda: state() == "Completed")
    assert browser.execute_script("return window.notReloaded") is True
    assert "&quot;n&quot;: 4" in browser.page_source or '"n": 4' in browser.page_source
    assert len(browser.find_elements(By.CSS_SELECTOR, "a.child-flow")) == 1
    _shot(browser, "run-from-form.png")
    browser.get(f"{base}/runs")
    _shot(browser, "runs.png")


def test_a_bad_value_in_the_form_is_shown_not_queued(browser: Any, site: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    base = site["base"]
    runs = len(_get(f"{base}/api/runs?deployment=outer/ui")["runs"])
    browser.get(f"{base}/deployments/outer/ui")
    # (the browser's own check stops "abc" in a number field: send JSON the schema refuses)
    browser.execute_script("document.getElementById('p-n').type = 'text'")
    field = browser.find_element(By.ID, "p-n")
    field.clear()
    field.send_keys("1.5")
    browser.find_element(By.ID, "run-button").click()
    errors = _until("the error", lambda: browser.find_element(By.ID, "form-errors").text)
    assert "whole number" in errors
    assert len(_get(f"{base}/api/runs?deployment=outer/ui")["runs"]) == runs
