"""The dashboard in a real browser: the distribution's headless Chromium driven by Selenium.

Opens every page (screenshots under tests/artifacts/), follows a trajectory into its detail and
adds feedback, logs in with the token, and presses pause on a running tiny-model training job
and sees it paused; no page may log a console error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from watch_support import seed_loop, seed_trajectories
from watch_worker import TrainingWorker

from api_support import live_server
from learnloop.api.app import create_app
from learnloop.config import Settings
from learnloop.store.db import Database
from learnloop.store.models import Feedback, Job, JobState
from training_support import make_config

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).parent / "artifacts"

if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    if os.environ.get("CI"):
        pytest.fail("chromium and chromium-driver are missing; .ci/run installs them", pytrace=False)
    pytestmark = pytest.mark.skip(
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    )


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1440,1100",
        "--hide-scrollbars",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(what: str, predicate: Callable[[], object], timeout: float = 30) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - the element may be mid-swap; try again
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def click(driver: object, selector: str) -> None:
    """Click the element ``selector`` names; the live regions swap their HTML every few seconds, so an
    element found just before a swap is stale by the click: find it again then."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(20):
        try:
            driver.find_element(By.CSS_SELECTOR, selector).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.1)
    raise AssertionError(f"{selector} kept going stale")


def console_errors(driver: object) -> list[str]:
    return [f"{e['level']}: {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def shoot(driver: object, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    # The whole page, not just the window: grow the window to the document's height first.
    height = driver.execute_script("return Math.max(document.body.scrollHeight, 900)")
    driver.set_window_size(1440, min(int(height) + 40, 4000))
    time.sleep(0.3)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1440, 1100)
    return path


def test_dashboard_in_chromium(
    browser: object, settings: Settings, sqlite_db: Database, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    db = sqlite_db
    seed_trajectories(db)
    seeded = seed_loop(db, with_running=False)
    config = make_config(
        tiny_model_dir, tmp_path, max_steps=100_000, checkpoint_every=100_000, out="browser-run"
    )
    worker = TrainingWorker(db, config).start()
    app_settings = settings.model_copy(update={"api_token": SecretStr("tok-123")})
    d = browser
    try:
        with live_server(create_app(app_settings, db, watch_inbox=False)) as url:
            wait_for(
                "the job's first steps", lambda: _job(db, worker.job_id).progress.get("step", 0) >= 3, 120
            )
            pages = {
                "overview": "/",
                "trajectories": "/trajectories",
                "rewards": "/rewards",
                "datasets": "/datasets",
                "dataset": f"/datasets/{seeded['dataset']}",
                "jobs": "/jobs",
                "versions": "/versions",
                "serving": "/serving",
                "quality": "/quality",
                "login": "/login",
            }
            for name, path in pages.items():
                d.get(url + path)
                wait_for(
                    f"{path} to render", lambda: d.execute_script("return document.readyState") == "complete"
                )
                assert d.find_element(By.TAG_NAME, "h1").text, path
                for chart in d.find_elements(By.CSS_SELECTOR, "[data-chart]"):
                    assert chart.find_elements(By.CSS_SELECTOR, "svg, .empty"), f"chart not drawn on {path}"
                assert "chart error" not in d.page_source
                shoot(d, name)
                assert console_errors(d) == [], path

            # Live refresh: the overview's fragment is swapped in without a reload, and shows the running job.
            d.get(url + "/")
            region = d.find_element(By.ID, "live-overview")
            first = region.get_attribute("data-refreshed")
            wait_for(
                "a live refresh", lambda: region.get_attribute("data-refreshed") not in (None, first), 15
            )
            assert f"job {worker.job_id} running" in region.text
            countdown = d.find_element(By.CSS_SELECTOR, "[data-countdown]").text
            assert countdown and countdown != "due now"

            # Follow a trajectory into its detail, read the tool call, add feedback.
            d.get(url + "/trajectories?q=order")
            d.find_element(By.CSS_SELECTOR, "a.trajectory-link").click()
            wait_for("the detail page", lambda: "/trajectories/t-tool" in d.current_url)
            assert "lookup_order" in d.find_element(By.ID, "messages").text
            shoot(d, "trajectory")
            # Writes need the token: log in first.
            d.get(url + "/login")
            d.find_element(By.NAME, "token").send_keys("tok-123")
            d.find_element(By.CSS_SELECTOR, "form[action='/login'] button").click()
            wait_for("the login", lambda: d.current_url.rstrip("/") == url)
            d.get(url + "/trajectories/t-tool")
            form = d.find_element(By.ID, "feedback-form")
            form.find_element(By.NAME, "comment").send_keys("checked in the browser")
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            wait_for("the feedback row", lambda: _feedback(db, "checked in the browser"))
            wait_for("the page to show it", lambda: "checked in the browser" in d.page_source)
            assert console_errors(d) == []

            # The running tiny-model job: watch its live curve, press pause, see it paused.
            d.get(url + f"/jobs/{worker.job_id}")
            stream = d.find_element(By.ID, "job-stream")
            start = int(stream.get_attribute("data-last-step") or 0)
            wait_for(
                "new steps over SSE", lambda: int(stream.get_attribute("data-last-step") or 0) > start + 2, 60
            )
            click(d, "button[data-action=pause]")
            wait_for(
                "the job to be paused in the page",
                lambda: d.find_element(By.ID, "job-state").text == "paused",
                30,
            )
            assert _job(db, worker.job_id).state == JobState.paused
            paused_at = _job(db, worker.job_id).progress["step"]
            time.sleep(1.5)
            assert _job(db, worker.job_id).progress["step"] == paused_at  # really stopped stepping
            shoot(d, "job-paused")
            click(d, "button[data-action=resume]")
            wait_for("the job to run again", lambda: _job(db, worker.job_id).progress["step"] > paused_at, 30)
            wait_for(
                "the page to show it running",
                lambda: d.find_element(By.ID, "job-state").text == "running",
                30,
            )
            shoot(d, "job")
            click(d, "button[data-action=stop]")
            d.switch_to.alert.accept()
            worker.join(60)
            assert worker.error is None and worker.result.stopped
            wait_for(
                "the page to show it stopped",
                lambda: d.find_element(By.ID, "job-state").text == "cancelled",
                30,
            )
            assert console_errors(d) == []
    finally:
        worker.control.stop()
        worker.join(30)


def _job(db: Database, job_id: int) -> Job:
    with db.read_session() as s:
        return s.get(Job, job_id)


def _feedback(db: Database, comment: str) -> bool:
    from sqlalchemy import select

    with db.read_session() as s:
        return s.scalars(select(Feedback).where(Feedback.comment == comment)).first() is not None
