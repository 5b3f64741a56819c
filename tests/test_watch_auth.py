"""Who may see and steer: every route the app mounts, walked without a token, and the dashboard's login.

``OPEN`` is the documented list of routes anyone may call (README, "Watching and steering"): a new
route is refused without a token unless it is added there on purpose.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from watch_support import seed_loop, seed_trajectories

from learnloop.api.app import create_app
from learnloop.config import Settings
from learnloop.store.db import Database

WRITE, READ = "wr1te-token", "re4d-token"

# Routes open to anyone, by (method, path). Probes need health and readiness, Prometheus scrapes
# without a token, the login page must be reachable to log in; the API's description (no data) and
# the static assets (styles, scripts, the icon) hold nothing stored.
OPEN = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
}
OPEN_MOUNTS = {"/static"}
# The OpenAI-compatible routes check serving.api_key, else the write token; the read token is not theirs.
SERVING_ROUTES = re.compile(r"^/v1/(models|chat/completions)")


def mounted(app: object) -> Iterator[tuple[str, str]]:
    """(method, path) of every route the app answers, whatever router it came from; mounts as
    (``MOUNT``, path)."""
    for route in app.routes:  # type: ignore[attr-defined]
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:  # FastAPI keeps included routers nested
            for ctx in contexts() if callable(contexts) else contexts:
                for method in sorted(ctx.methods or ()):
                    yield method, ctx.path
        elif getattr(route, "methods", None):
            for method in sorted(route.methods):
                yield method, route.path
        else:
            yield "MOUNT", route.path


def concrete(path: str) -> str:
    """A path with a plausible value in each parameter ("1": a row id, a version, a name alike)."""
    return re.sub(r"\{[^}]+\}", "1", path)


def ask(c: TestClient, method: str, path: str) -> object:
    # A stream that were open by mistake must not hang the test: max_s bounds it.
    url = concrete(path) + "?max_s=1&poll_s=0.1"
    if method == "GET":
        return c.get(url, follow_redirects=False)
    return c.request(method, url, content=b"{}", headers={"Content-Type": "application/json"})


def refused(r: object) -> bool:
    return r.status_code == 401 or (  # type: ignore[attr-defined]
        r.status_code == 303 and r.headers["location"].startswith("/login?")  # type: ignore[attr-defined]
    )


def tokens(settings: Settings, *, write: bool = True, read: bool = True) -> Settings:
    return settings.model_copy(
        update={
            "api_token": SecretStr(WRITE) if write else None,
            "server": settings.server.model_copy(update={"read_token": SecretStr(READ) if read else None}),
        }
    )


def test_every_route_needs_a_token_but_the_open_ones(settings: Settings, sqlite_db: Database) -> None:
    seed_trajectories(sqlite_db)
    app = create_app(tokens(settings), sqlite_db, watch_inbox=False)
    routes = sorted(set(mounted(app)) - {(m, p) for m, p in mounted(app) if m == "HEAD"})
    paths = {p for _, p in routes}
    # The walk sees every kind of route: API, OpenAI, dashboard pages, fragments, streams, buttons.
    for expected in ("/v1/ingest", "/v1/chat/completions", "/trajectories/{key:path}", "/ui/live/{name}"):
        assert expected in paths, expected
    assert "/ui/stream/events" in paths and "/ui/stream/jobs/{job_id}" in paths
    assert "/versions/{key}" in paths and "/ui/trajectories/{trajectory_id:path}/feedback" in paths
    c = TestClient(app)
    let_through = []
    for method, path in routes:
        if method == "MOUNT":
            assert path in OPEN_MOUNTS, f"a mount nobody decided on: {path}"
            continue
        r = ask(c, method, path)
        if (method, path) in OPEN:
            assert not refused(r), (method, path, r.status_code)
        elif not refused(r):
            let_through.append(f"{method} {path}: {r.status_code}")
    assert let_through == [], "answered without a token:\n" + "\n".join(let_through)
    assert c.get("/static/app.css").status_code == 200
    # What the probe found: a trajectory's text to anyone, by id or by search.
    for url in ("/trajectories/t-tool", "/trajectories?q=order", "/ui/live/overview"):
        r = c.get(url, follow_redirects=False)
        assert refused(r) and "Order 42" not in r.text, url


def test_the_read_token_alone_guards_every_read(settings: Settings, sqlite_db: Database) -> None:
    """With only server.read_token set (writes open, as without any token), every read needs it."""
    app = create_app(tokens(settings, write=False), sqlite_db, watch_inbox=False)
    c = TestClient(app)
    open_reads = []
    for method, path in sorted(set(mounted(app))):
        if method != "GET" or ("GET", path) in OPEN or SERVING_ROUTES.match(path):
            continue
        r = ask(c, method, path)
        if not refused(r):
            open_reads.append(f"GET {path}: {r.status_code}")
    assert open_reads == []


@pytest.fixture
def seeded(db: Database) -> dict:
    seed_trajectories(db)
    return seed_loop(db)


def login(c: TestClient, token: str, next_page: str = "/") -> object:
    return c.post(
        "/login",
        content=f"token={token}&next={next_page}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )


def test_a_login_opens_the_dashboard(settings: Settings, db: Database, seeded: dict) -> None:
    c = TestClient(create_app(tokens(settings), db, watch_inbox=False))
    r = c.get("/trajectories/t-tool?x=1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Ftrajectories%2Ft-tool%3Fx%3D1"
    assert 'name="next" value="/trajectories/t-tool?x=1"' in c.get(r.headers["location"]).text
    assert login(c, "nope").headers["location"].startswith("/login?error=wrong+token")
    assert "learnloop_session" not in c.cookies

    # The read token: every page, fragment and stream; no button.
    r = login(c, READ, "/trajectories/t-tool")
    assert r.status_code == 303 and r.headers["location"] == "/trajectories/t-tool"
    assert READ not in c.cookies["learnloop_session"]
    page = c.get("/trajectories/t-tool")
    assert page.status_code == 200 and "Order 42 has shipped" in page.text and "read only" in page.text
    assert c.get("/ui/live/overview").status_code == 200
    assert c.get(f"/ui/api/jobs/{seeded['running']}/metrics").json()["count"] == 60
    with c.stream("GET", "/ui/stream/events?max_s=1&poll_s=0.1") as s:
        assert s.status_code == 200 and "event: event" in "".join(s.iter_text())
    fb = c.post(
        "/ui/trajectories/t-tool/feedback", json={"comment": "read only"}, headers={"X-Learnloop-Action": "1"}
    )
    assert fb.status_code == 401

    # The write token: the buttons too (with the header a cross-site form cannot send).
    login(c, WRITE)
    fb = c.post(
        "/ui/trajectories/t-tool/feedback", json={"comment": "steered"}, headers={"X-Learnloop-Action": "1"}
    )
    assert fb.status_code == 200 and fb.json()["feedback_inserted"] == 1
    assert c.post("/ui/trajectories/t-tool/feedback", json={"comment": "no header"}).status_code == 401
    assert "read only" not in c.get("/").text

    c.post("/logout")
    assert c.get("/", follow_redirects=False).status_code == 303


def test_a_bearer_token_opens_the_dashboard_too(settings: Settings, sqlite_db: Database) -> None:
    c = TestClient(create_app(tokens(settings), sqlite_db, watch_inbox=False))
    assert c.get("/jobs", headers={"Authorization": f"Bearer {READ}"}).status_code == 200
    assert c.get("/ui/live/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/\\evil.example"])
def test_login_never_sends_the_browser_to_another_site(
    settings: Settings, sqlite_db: Database, target: str
) -> None:
    c = TestClient(create_app(tokens(settings), sqlite_db, watch_inbox=False))
    assert login(c, READ, target).headers["location"] == "/"


def test_a_token_of_any_characters_logs_in(settings: Settings, sqlite_db: Database) -> None:
    """A write token outside latin-1 made the login answer 500 (the cookie held the token itself)."""
    token = "tök€n ✓"
    c = TestClient(create_app(settings.model_copy(update={"api_token": SecretStr(token)}), sqlite_db))
    seed_trajectories(sqlite_db)
    form = "token=" + "".join(f"%{b:02X}" for b in token.encode())
    r = c.post(
        "/login",
        content=form.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = c.cookies["learnloop_session"]
    assert cookie.isascii() and re.fullmatch(r"[0-9a-f]{64}", cookie)  # an HMAC, not the token
    fb = c.post(
        "/ui/trajectories/t-tool/feedback", json={"thumbs": "up"}, headers={"X-Learnloop-Action": "1"}
    )
    assert fb.status_code == 200 and fb.json()["feedback_inserted"] == 1
    # The same cookie value for another token is not a login.
    other = TestClient(create_app(settings.model_copy(update={"api_token": SecretStr("tök€n")}), sqlite_db))
    other.cookies.set("learnloop_session", cookie)
    fb = other.post(
        "/ui/trajectories/t-tool/feedback", json={"thumbs": "up"}, headers={"X-Learnloop-Action": "1"}
    )
    assert fb.status_code == 401
