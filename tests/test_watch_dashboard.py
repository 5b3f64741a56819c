"""Dashboard over HTTP: every page with real rows, filters, the buttons (and their token), SSE resume."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select
from watch_support import chat, seed_loop, seed_trajectories

from api_support import live_server
from learnloop.api.app import create_app
from learnloop.config import Settings
from learnloop.store.db import Database
from learnloop.store.models import (
    Alias,
    AliasEvent,
    DesiredState,
    Feedback,
    Job,
    JobState,
    ModelVersion,
    TrainingMetric,
)

PAGES = ["/", "/trajectories", "/rewards", "/datasets", "/jobs", "/versions", "/serving", "/quality"]


@pytest.fixture
def seeded(db: Database) -> dict:
    seed_trajectories(db)
    return seed_loop(db)


def client(settings: Settings, db: Database) -> TestClient:
    return TestClient(create_app(settings, db, watch_inbox=False))


def template_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the dashboard's templates logged: a name used that the context lacks."""
    return [r.getMessage() for r in caplog.records if r.name == "learnloop.dashboard"]


def test_every_page_renders_empty(settings: Settings, db: Database, caplog: pytest.LogCaptureFixture) -> None:
    c = client(settings, db)
    for page in PAGES:
        r = c.get(page)
        assert r.status_code == 200, page
        assert "<nav>" in r.text and "/static/app.js" in r.text
        live = c.get(f"/ui/live/{page.strip('/') or 'overview'}") if page != "/trajectories" else r
        assert live.status_code == 200, page
    assert template_warnings(caplog) == []
    assert "Nothing is training right now:" in c.get("/").text
    assert "No model versions registered yet: a loop's cycle registers one" in c.get("/versions").text


def test_every_page_shows_the_rows(
    settings: Settings, db: Database, seeded: dict, caplog: pytest.LogCaptureFixture
) -> None:
    c = client(settings, db)
    home = c.get("/").text
    for stage in ("capture", "score", "datasets", "train", "registry", "evaluate", "serve"):
        assert f'data-stage="{stage}"' in home
    assert (
        "learnloop → v0002 · 10% → v0003" in home
        and f"job {seeded['running']} running · training step 60/200" in home
    )
    assert 'data-countdown="2' in home and "12 new trajectories, 50 needed" in home
    assert "CUDA out of memory" in home  # the recent events
    jobs = c.get("/jobs").text
    assert f'href="/jobs/{seeded["running"]}"' in jobs and "322" in jobs and 'data-post="/ui/jobs/' in jobs
    job = c.get(f"/jobs/{seeded['running']}").text
    chart = json.loads(_attr(job, 'id="chart-loss" data-chart="'))
    assert len(chart["series"][0]["points"]) == 60 and chart["series"][0]["points"][0][0] == 1
    versions = c.get("/versions").text
    assert "v0003" in versions and "win rate 0.41 &lt; 0.5" in versions and "└─" in versions
    assert "/ui/versions/v0001/promote" in versions and "/ui/aliases/learnloop/rollback" in versions
    serving = c.get("/serving").text
    assert "v0001" in serving and "v0002" in serving and "ms" in serving
    quality = json.loads(_attr(c.get("/quality").text, 'data-chart="'))
    assert {m["label"] for m in quality["markers"]} == {"promote v0001", "promote v0002"}
    assert any(s["name"] == "live reward · v0002" for s in quality["series"])
    rewards = c.get("/rewards").text
    assert "math" in rewards and "support" in rewards
    ds = c.get(f"/datasets/{seeded['dataset']}").text
    assert "no assistant answer" in ds and "suggested max length" in ds
    assert "sft-nightly" in c.get("/datasets").text
    for page in (f"/versions/{v}" for v in ("v0001", "v0002", "v0003")):
        assert c.get(page).status_code == 200
    assert c.get(f"/ui/live/job-{seeded['running']}").status_code == 200
    assert template_warnings(caplog) == []


def _attr(html: str, start: str) -> str:
    import html as h

    i = html.index(start) + len(start)
    return h.unescape(html[i : html.index('"', i)])


def test_trajectory_filters_and_detail(settings: Settings, db: Database, seeded: dict) -> None:
    c = client(settings, db)

    def ids(query: str) -> set[str]:
        text = c.get(f"/trajectories?{query}").text
        return {part.split('"')[0] for part in text.split('href="/trajectories/')[1:]}

    assert len(ids("")) == 26
    assert ids("source=teacher") == {"t-teacher-0", "t-teacher-1", "t-teacher-2"}
    assert ids("tag=orders") == {"t-tool"}
    assert ids("scenario=support&reward_max=0") == {"t-prod-0", "t-prod-4", "t-prod-8"}
    assert ids("q=order%2042") == {"t-tool"}
    assert "t-served-9" in ids("source=served&reward_min=0.9")
    assert "t-served-0" not in ids("source=served&reward_min=0.9")
    bad = c.get("/trajectories?reward_min=abc&date_from=yesterday").text
    assert "reward_min: &#39;abc&#39; is not a number" in bad and "date_from" in bad

    detail = c.get("/trajectories/t-tool").text
    assert "lookup_order" in detail and "&#34;order&#34;: 42" in detail and "Order 42 has shipped" in detail
    assert c.get("/trajectories/nope").status_code == 404

    r = c.post("/ui/trajectories/t-tool/feedback", json={"thumbs": "down", "comment": "too slow"})
    assert r.status_code == 200 and r.json()["feedback_inserted"] == 1
    with db.read_session() as s:
        fb = s.scalars(select(Feedback).where(Feedback.comment == "too slow")).one()
        assert fb.thumbs == -1 and fb.author == "dashboard"
    assert c.post("/ui/trajectories/t-tool/feedback", json={"rating": "x"}).status_code == 422


def test_job_buttons_write_the_rows(settings: Settings, db: Database, seeded: dict) -> None:
    c = client(settings, db)
    running, queued = seeded["running"], seeded["queued"][0]
    assert c.post(f"/ui/jobs/{running}/pause").json() == {
        "id": running,
        "state": "running",
        "desired_state": "pause",
    }
    assert (
        c.post(f"/ui/jobs/{queued}/pause").json()["state"] == "paused"
    )  # no worker holds it: paused at once
    assert c.post(f"/ui/jobs/{queued}/resume").json()["state"] == "queued"
    assert c.post(f"/ui/jobs/{queued}/cancel").json()["state"] == "cancelled"
    r = c.post(f"/ui/jobs/{queued}/pause")
    assert r.status_code == 409 and "already cancelled" in r.json()["error"]
    assert c.post(f"/ui/jobs/{running}/explode").status_code == 422
    assert c.post("/ui/jobs/99999/pause").status_code == 404
    with db.read_session() as s:
        job = s.get(Job, running)
        assert job.desired_state == DesiredState.pause and job.state == JobState.running
    assert "Resume" in c.get(f"/ui/live/job-{running}").text


def test_promote_and_rollback_buttons_move_the_alias(settings: Settings, db: Database, seeded: dict) -> None:
    c = client(settings, db)
    # The buttons go through the registry: the gate rejected v0003,
    # so a plain promote is refused with the reason.
    refused = c.post("/ui/versions/v0003/promote")
    assert refused.status_code == 409 and "gate said reject: win rate 0.41 < 0.5" in refused.json()["error"]
    page = c.get("/versions").text
    assert (
        "/ui/versions/v0003/promote?force=true" in page and "Force promote" in page
    )  # the override, asked for as one
    assert "/ui/versions/v0001/promote?force" not in page  # a version the gate passed gets the plain button
    forced = c.post("/ui/versions/v0003/promote?force=true").json()
    assert forced == {"alias": "learnloop", "version": "v0003", "previous": "v0002", "action": "force"}
    assert c.post("/ui/versions/v0003/promote?force=true").status_code == 409  # already serving
    assert c.post("/ui/versions/v9/promote").status_code == 404
    with db.read_session() as s:
        assert s.get(Alias, "learnloop").version_id == "v0003"
        assert (
            s.get(ModelVersion, "v0003").state.value == "serving"
            and s.get(ModelVersion, "v0002").state.value == "archived"
        )
    # Rollback walks back what the alias served: v0003 -> v0002 -> v0001 -> base, then there is nothing left.
    assert c.post("/ui/aliases/learnloop/rollback").json() == {
        "alias": "learnloop",
        "version": "v0002",
        "previous": "v0003",
    }
    assert c.post("/ui/aliases/learnloop/rollback").json() == {
        "alias": "learnloop",
        "version": "v0001",
        "previous": "v0002",
    }
    assert c.post("/ui/aliases/learnloop/rollback").json() == {
        "alias": "learnloop",
        "version": None,
        "previous": "v0001",
    }
    assert c.post("/ui/aliases/learnloop/rollback").status_code == 409
    with db.read_session() as s:
        log = [
            (e.action, e.from_version, e.to_version)
            for e in s.scalars(select(AliasEvent).order_by(AliasEvent.id))
            if e.action != "split"
        ]
    assert log[-4:] == [
        ("force", "v0002", "v0003"),
        ("rollback", "v0003", "v0002"),
        ("rollback", "v0002", "v0001"),
        ("rollback", "v0001", None),
    ]


def test_buttons_need_the_token_when_one_is_set(settings: Settings, db: Database, seeded: dict) -> None:
    c = client(settings.model_copy(update={"api_token": SecretStr("s3cret")}), db)
    url = f"/ui/jobs/{seeded['running']}/pause"
    assert c.post(url).status_code == 401
    assert "log in to steer" in c.get("/").text
    assert c.get("/").status_code == 200  # reading stays open
    r = c.post(
        "/login",
        content="token=wrong",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and "error" in r.headers["location"]
    r = c.post(
        "/login",
        content="token=s3cret",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert (
        r.status_code == 303
        and "learnloop_token" in r.headers["set-cookie"]
        and "samesite=strict" in r.headers["set-cookie"].lower()
    )
    assert (
        c.post(url).status_code == 401
    )  # a cookie alone could be a cross-site form: the action header is needed too
    assert c.post(url, headers={"X-Learnloop-Action": "1"}).status_code == 200
    c.cookies.clear()
    assert c.post(url, headers={"Authorization": "Bearer s3cret"}).status_code == 200


def _sse(lines: Iterator[str], count: int, timeout: float = 10) -> list[dict]:
    """Read ``count`` SSE events (dicts of their fields) from a line iterator."""
    events, current, deadline = [], {}, time.monotonic() + timeout
    for line in lines:
        if line == "":
            if "event" in current:
                events.append(current)
                if len(events) == count:
                    return events
            current = {}
        elif ":" in line:
            k, _, v = line.partition(":")
            current[k] = v.lstrip(" ")
        assert time.monotonic() < deadline
    return events


def test_job_stream_resumes_after_last_event_id(settings: Settings, db: Database, seeded: dict) -> None:
    job = seeded["running"]
    with live_server(create_app(settings, db, watch_inbox=False)) as url:
        with httpx.stream("GET", f"{url}/ui/stream/jobs/{job}?after=50&poll_s=0.2", timeout=10) as r:
            metrics, state = _sse(r.iter_lines(), 2)
        assert metrics["event"] == "metrics" and metrics["id"] == "60"
        assert [p["step"] for p in json.loads(metrics["data"])["points"]] == list(range(51, 61))
        assert json.loads(state["data"])["state"] == "running"

        # The browser reconnects with Last-Event-ID: only what it has not seen comes, then what is new.
        with httpx.stream(
            "GET", f"{url}/ui/stream/jobs/{job}?poll_s=0.2", headers={"Last-Event-ID": "58"}, timeout=10
        ) as r:
            lines = r.iter_lines()
            first = _sse(lines, 1)[0]
            assert [p["step"] for p in json.loads(first["data"])["points"]] == [59, 60]
            with db.session() as s:
                s.add(TrainingMetric(job_id=job, step=61, loss=0.5))
            nxt = next(e for e in _sse(lines, 4) if e["event"] == "metrics")
        assert nxt["id"] == "61" and json.loads(nxt["data"])["points"][0]["loss"] == 0.5

        with httpx.stream(
            "GET", f"{url}/ui/stream/events?poll_s=0.2", headers={"Last-Event-ID": "1"}, timeout=10
        ) as r:
            evs = _sse(r.iter_lines(), 2)
        assert [e["id"] for e in evs] == ["2", "3"]


def test_trajectory_pages_walk_the_whole_list_in_time_order(db: Database, seeded: dict) -> None:
    from learnloop.watch.trajectories import TrajectoryFilter, search_trajectories

    seen, cursor = [], None
    while True:
        with db.read_session() as s:
            page = search_trajectories(s, TrajectoryFilter(before=cursor), limit=7)
        seen += [(t["created_at"], t["id"]) for t in page["items"]]
        cursor = page["next_before"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 26
    assert seen == sorted(seen, reverse=True)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"rating": [1]}', b'{"thumbs": 1}', b'{"comment": {"a": 1}}', b'"text"', b""],
)
def test_feedback_form_refuses_bad_bodies_with_4xx(
    settings: Settings, db: Database, seeded: dict, body: bytes
) -> None:
    c = client(settings, db)
    r = c.post("/ui/trajectories/t-tool/feedback", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500 and "feedback form" in r.json()["error"], (body, r.text)
    with db.read_session() as s:
        assert s.scalars(select(Feedback).where(Feedback.author == "dashboard")).first() is None


@pytest.mark.parametrize(
    "url",
    [
        "/ui/live/job-" + "9" * 20,
        "/ui/live/job-" + "1" * 11,
        "/ui/live/job--1",
        "/ui/live/job-x",
        "/jobs/" + "9" * 20,
        "/datasets/" + "9" * 20,
        "/jobs?offset=" + "9" * 20,
        "/rewards?days=0",
    ],
)
def test_out_of_range_ids_are_422_on_both_databases(settings: Settings, db: Database, url: str) -> None:
    r = client(settings, db).get(url)
    assert r.status_code == 422, (url, r.status_code, r.text[:200])


def test_unknown_ids_are_404(settings: Settings, db: Database, seeded: dict) -> None:
    c = client(settings, db)
    unknown = ("/ui/live/job-999999", "/jobs/999999", "/datasets/999999", "/versions/v9999", "/ui/live/nope")
    for url in unknown:
        assert c.get(url).status_code == 404, url


def test_a_page_per_version(settings: Settings, db: Database, seeded: dict) -> None:
    c = client(settings, db)
    for page in ("/versions", "/serving", "/quality", "/"):
        assert 'href="/versions/v0002"' in c.get(page).text, page  # version ids link to their page
    assert 'href="/versions/v0001"' in c.get(f"/jobs/{seeded['done']}").text  # the job made v0001
    assert 'href="/versions/v0001"' in c.get(f"/datasets/{seeded['dataset']}").text  # trained on it

    v2 = c.get("/versions/v0002").text
    lineage = _section(v2, 'id="lineage"')
    assert 'href="/versions/v0001"' in lineage and f'href="/datasets/{seeded["dataset"]}"' in lineage
    assert 'href="/versions/v0003"' in lineage  # continued by
    assert "reward +0.11 over v0001" in _section(v2, 'id="evaluations"')
    history = _section(v2, 'id="alias-history"')
    # A header, then the two moves that involved it: promoted to it, then split from it to v0003.
    assert history.count("<tr>") == 3 and "gate passed" in history and ">split<" in history
    files = _section(v2, 'id="files"')
    assert "adapter_config.json" in files and "missing" not in files

    v1 = c.get("/versions/v0001").text
    assert "loss" in _section(v1, 'id="metrics"') and "0.9" in _section(v1, 'id="metrics"')
    with db.read_session() as s:
        folder = Path(s.get(ModelVersion, "v0001").artifact_path)
    (folder / "adapter_config.json").unlink()
    assert "missing" in _section(c.get("/versions/v0001").text, 'id="files"')


def _section(html: str, marker: str) -> str:
    """The card that starts at ``marker``, up to the next card."""
    start = html.index(marker)
    end = html.find('<div class="card"', start + 1)
    return html[start : end if end != -1 else len(html)]


def test_odd_trajectory_ids_link_to_their_page(settings: Settings, db: Database) -> None:
    from learnloop.store.records import parse_batch
    from learnloop.store.trajectories import ingest

    odd = "imports/2024 #7?x=ü"
    with db.session() as s:
        ingest(s, parse_batch({"trajectories": [{"id": odd, "messages": chat("hi", "hello")}]}))
    c = client(settings, db)
    listing = c.get("/trajectories").text
    href = listing.split('href="/trajectories/')[1].split('"')[0]
    assert href == "imports%2F2024%20%237%3Fx%3D%C3%BC"
    page = c.get("/trajectories/" + href)
    assert page.status_code == 200 and "hello" in page.text
    r = c.post(f"/ui/trajectories/{href}/feedback", json={"comment": "odd but fine"})
    assert r.status_code == 200 and r.json()["feedback_inserted"] == 1


def test_a_page_is_one_template_and_one_registered_view(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jinja2

    from learnloop import watch
    from learnloop.api.routes import dashboard

    monkeypatch.setattr(watch.views, "PAGES", dict(watch.PAGES))  # the registry as it was, afterwards
    monkeypatch.setattr(watch, "PAGES", watch.views.PAGES)
    env = dashboard.templates.env
    templates = {
        "probe.html": '{% extends "base.html" %}{% block content %}<h1>Probe</h1>'
        '<div data-live="/ui/live/probe">{% include "_probe.html" %}</div>{% endblock %}',
        "_probe.html": "<p>{{ answer }} from {{ days }}</p>",
    }
    monkeypatch.setattr(env, "loader", jinja2.ChoiceLoader([jinja2.DictLoader(templates), env.loader]))

    @watch.views.page("probe", "/probe", title="Probe", live=True)
    def probe(db: Database, settings: Settings, params: watch.Params) -> dict:
        return {"answer": 42, "days": params.integer("days", 7, lo=1, hi=9)}

    c = client(settings, db)
    page = c.get("/probe?days=3")
    assert page.status_code == 200 and "<p>42 from 3</p>" in page.text
    assert '<a href="/probe" class="on">Probe</a>' in page.text  # in the navigation, current
    assert '<a href="/probe" class="">Probe</a>' in c.get("/jobs").text
    assert c.get("/ui/live/probe").text == "<p>42 from 7</p>"
    assert c.get("/probe?days=10").status_code == 422


def test_the_overview_says_the_database_is_down(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    down = Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    c = TestClient(create_app(settings, down, watch_inbox=False))
    for url in ("/", "/ui/live/overview"):
        r = c.get(url)
        assert r.status_code == 200 and "unreachable" in r.text, url
    assert template_warnings(caplog) == []


def test_a_version_that_is_gone_is_named_not_linked(settings: Settings, db: Database, seeded: dict) -> None:
    """Served traffic and this process's counters outlive a deleted version: no link to a 404 then."""
    from learnloop.store.records import parse_batch
    from learnloop.store.trajectories import ingest
    from learnloop.watch import observe_serving

    served = {"messages": chat("hi", "hello"), "source": "served", "model_version": "v0099"}
    with db.session() as s:
        ingest(s, parse_batch({"trajectories": [{**served, "id": "t-gone"}]}))
    observe_serving("v0098", 3, 0.1)
    c = client(settings, db)
    serving = c.get("/serving").text
    assert "v0099" in serving and "v0098" in serving
    assert "/versions/v0099" not in serving and "/versions/v0098" not in serving
    assert 'href="/versions/v0002"' in serving  # a version that exists is still linked
    page = c.get("/trajectories/t-gone").text
    assert "v0099" in page and "/versions/v0099" not in page
