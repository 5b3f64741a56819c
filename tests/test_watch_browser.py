"""The dashboard in a real browser: the distribution's headless Chromium driven by Selenium.

After a quick demo on a real data dir, logs in and crawls: every page the navigation reaches, and
every link on those pages, in the browser; the links on those over HTTP; each page's live fragments
too. Any 4xx/5xx, console error or template warning fails it. Then, on seeded rows: follows a
trajectory into its detail and adds feedback, and presses pause on a running tiny-model training
job and sees it paused (screenshots under tests/artifacts/).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
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
REPO = Path(__file__).resolve().parent.parent
# `DASHBOARD_SCREENSHOTS=docs/screenshots pytest tests/test_watch_browser.py -k crawl` writes the README's
# screenshots of every page from the crawl (a path relative to the repository root, or absolute).
SCREENSHOTS = os.environ.get("DASHBOARD_SCREENSHOTS")
SHOT_NAMES = {
    "/": "overview",
    "/trajectories": "trajectories",
    "/rewards": "rewards",
    "/datasets": "datasets",
    "/jobs": "jobs",
    "/versions": "versions",
    "/serving": "serving",
    "/quality": "quality",
    "/trajectories/": "trajectory",
    "/datasets/": "dataset",
    "/jobs/": "job",
    "/versions/": "version",
}

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
    # "performance": the network events, so the crawl sees the status of every request a page makes.
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
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


def shoot(driver: object, name: str, folder: Path = ARTIFACTS) -> Path:
    """The whole page (not just the window) as a PNG, through Chromium's own full-page capture."""
    import base64

    folder.mkdir(parents=True, exist_ok=True)
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 4000), "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path = folder / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def failed_requests(driver: object, origin: str) -> list[str]:
    """Every request to this server the browser made since the last call that got a 4xx or 5xx
    (pages, live fragments, streams, scripts), from Chromium's network log."""
    bad = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") != "Network.responseReceived":
            continue
        response = msg["params"]["response"]
        if response["url"].startswith(origin) and response["status"] >= 400:
            bad.append(f"{response['status']} {response['url']}")
    return bad


WRITE_TOKEN, READ_TOKEN = "crawl-write", "crawl-read"


@pytest.fixture(scope="module")
def demo_dir(quick_demo: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real data dir after `learnloop demo --quick`: captured, scored, trained, evaluated, promoted,
    served. The run's one quick demo (``quick_demo``), copied: the crawl's clicks write to it."""
    assert quick_demo["returncode"] == 0, quick_demo["stderr"][-3000:]
    assert json.loads(quick_demo["stdout"])["promoted"]
    # Paths the demo stored (adapters, the tiny model) still name the shared dir, which stays unchanged.
    data = tmp_path_factory.mktemp("demo") / "demo"
    shutil.copytree(quick_demo["data"], data)
    return data


def test_crawl_every_page_after_a_quick_demo(
    browser: object, demo_dir: Path, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from selenium.webdriver.common.by import By

    s = settings.model_copy(
        update={
            "data_dir": demo_dir,
            "api_token": SecretStr(WRITE_TOKEN),
            "server": settings.server.model_copy(update={"read_token": SecretStr(READ_TOKEN)}),
        }
    )
    db = Database(f"sqlite:///{demo_dir / 'learnloop.db'}")
    d = browser
    problems: list[str] = []
    from learnloop.serving.setup import build_runtime

    # The demo's tiny model loaded, as `learnloop serve` would: the pages show a server that answers.
    served = s.model_copy(
        update={"serving": s.serving.model_copy(update={"base_model": str(demo_dir / "models" / "tiny")})}
    )
    runtime = build_runtime(served, db)
    shots = (REPO / SCREENSHOTS) if SCREENSHOTS else None
    shot_kinds: set[str] = set()
    with live_server(create_app(s, db, watch_inbox=False, serving=runtime)) as url:
        # The read token is set: the dashboard asks for a login first, and comes back after it.
        d.get(url + "/versions")
        wait_for("the login page", lambda: "/login" in d.current_url)
        d.find_element(By.NAME, "token").send_keys(WRITE_TOKEN)
        d.find_element(By.CSS_SELECTOR, "form[action='/login'] button").click()
        wait_for("the page asked for", lambda: urlsplit(d.current_url).path == "/versions")
        http = httpx.Client(
            base_url=url, cookies={"learnloop_session": d.get_cookie("learnloop_session")["value"]}
        )
        nav = [a.get_attribute("href") for a in d.find_elements(By.CSS_SELECTOR, "header nav a")]
        assert [urlsplit(h).path for h in nav] == [
            "/",
            "/trajectories",
            "/rewards",
            "/datasets",
            "/jobs",
            "/versions",
            "/serving",
            "/quality",
        ]
        failed_requests(d, url)  # what the login took is not the crawl's

        checked: set[str] = set()

        def check_http(link: str) -> str:
            """GET over HTTP (as the logged-in browser): the page and each live fragment it refreshes."""
            if link in checked:
                return ""
            checked.add(link)
            r = http.get(link)
            if r.status_code != 200:
                problems.append(f"{r.status_code} {link}")
                return ""
            for live in _attrs(r.text, "data-live"):
                check_http(live)
            return r.text

        def visit(link: str) -> list[str]:
            """Open ``link`` in Chromium: the page, its charts, its scripts; the links it holds."""
            check_http(link)
            d.get(urljoin(url, link))
            wait_for(
                f"{link} to render", lambda: d.execute_script("return document.readyState") == "complete"
            )
            if not d.find_elements(By.TAG_NAME, "h1"):
                problems.append(f"no heading on {link}")
            for chart in d.find_elements(By.CSS_SELECTOR, "[data-chart]"):
                if not chart.find_elements(By.CSS_SELECTOR, "svg, .empty"):
                    problems.append(f"a chart not drawn on {link}")
            if "chart error" in d.page_source:
                problems.append(f"chart error on {link}")
            # Every drawn chart titles both axes, and every point and bar has a tooltip.
            for chart in d.find_elements(By.CSS_SELECTOR, "[data-chart] svg"):
                if len(chart.find_elements(By.CSS_SELECTOR, ".axis-title")) != 2:
                    problems.append(f"a chart without its two axis titles on {link}")
            untitled = d.execute_script(
                "return [...document.querySelectorAll('[data-chart] svg circle, [data-chart] svg rect')]"
                ".filter(e => !e.querySelector('title')).length"
            )
            if untitled:
                problems.append(f"{untitled} chart points without a tooltip on {link}")
            kind = next(
                (
                    k
                    for k in SHOT_NAMES
                    if link == k or (len(k) > 1 and k.endswith("/") and link.startswith(k))
                ),
                None,
            )
            if shots is not None and kind is not None and kind not in shot_kinds:
                shot_kinds.add(kind)
                shoot(d, SHOT_NAMES[kind], shots)
            problems.extend(f"{link}: {e}" for e in console_errors(d) + failed_requests(d, url))
            links = []
            for a in d.find_elements(By.CSS_SELECTOR, "a[href]"):
                href = a.get_attribute("href") or ""
                parts = urlsplit(href)
                if href.startswith(url) and not parts.path.startswith("/static/"):
                    links.append(parts.path + (f"?{parts.query}" if parts.query else ""))
            return links

        pages = [urlsplit(h).path for h in nav]
        found = [link for page in pages for link in visit(page)]
        details = [link for link in dict.fromkeys(found) if link not in pages]
        deeper = [link for detail in details for link in visit(detail)]
        for link in dict.fromkeys(deeper):
            check_http(link)
        # The crawl saw every kind of page the demo made.
        for kind in ("/trajectories/", "/datasets/", "/jobs/", "/versions/v", "/ui/live/"):
            assert any(link.startswith(kind) for link in checked), kind
        http.close()
    db.dispose()
    if shots is not None:
        assert shot_kinds == set(SHOT_NAMES), set(SHOT_NAMES) - shot_kinds
    template_warnings = [r.getMessage() for r in caplog.records if r.name == "learnloop.dashboard"]
    assert problems + template_warnings == [], f"{len(checked)} pages and fragments checked"


def _attrs(html: str, name: str) -> list[str]:
    import html as h

    return [h.unescape(part.split('"', 1)[0]) for part in html.split(f'{name}="')[1:]]


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
