"""Issue 20.2: no cross-site writes, token or not; 20.9: ``Allow`` and ``OPTIONS`` say every method.

Every write route the app mounts (API, OpenAI routes, dashboard actions, login) is enumerated from
the app itself, so a route added later is covered without touching this file. Each gets the
requests a browser sends from another page: ``Origin`` and ``Sec-Fetch-Site`` as browsers set them,
with the bodies a page may send without a preflight (``text/plain``, forms). A curl-like client
(no Origin) and the server's own pages (same origin) still get through.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api_support import live_server
from learnloop.api import create_app
from learnloop.api.cross_site import WRITE_METHODS
from learnloop.api.methods import app_routes
from learnloop.config import Settings
from learnloop.store.db import Database
from learnloop.store.models import Trajectory

EVIL = "http://evil.example"
BATCH = b'{"trajectories": [{"id": "csrf", "messages": [{"role": "user", "content": "hi"}]}]}'


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


GUARD_WORDS = (
    "Cross-site request refused",
    "Form and text/plain bodies are refused",
    "not a name of this server",
)


def refused_by_guard(r: httpx.Response) -> bool:
    """Whether the cross-site guard answered (a route may answer 403 or 415 itself: OTLP's types)."""
    return r.status_code in (403, 415) and any(w in r.text for w in GUARD_WORDS)


def write_routes(app: FastAPI) -> list[tuple[str, str, bool]]:
    """(method, concrete path, documented) for every write route of ``app``."""
    found = []
    for route in app_routes(app):
        for method in sorted((route.methods or set()) & WRITE_METHODS):
            found.append((method, _concrete(route.path), bool(route.include_in_schema)))
    return found


@pytest.fixture
def app(settings: Settings, sqlite_db: Database) -> FastAPI:
    return create_app(settings, sqlite_db, watch_inbox=False)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_the_app_has_write_routes_of_every_kind(app: FastAPI) -> None:
    routes = {(m, p) for m, p, _ in write_routes(app)}
    assert {("POST", "/v1/ingest"), ("POST", "/v1/chat/completions"), ("PUT", "/v1/aliases/x1")} <= routes
    assert {("POST", "/v1/versions/x1/export"), ("DELETE", "/v1/versions/x1"), ("POST", "/login")} <= routes
    assert any(p.startswith("/ui/") for _, p in routes)


# What a page on another site makes the browser send, each a way around one rule or another.
CROSS_SITE = {
    "form post": {"Origin": EVIL, "Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
    "json fetch": {"Origin": EVIL, "Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"},
    "a port on localhost": {
        "Origin": "http://localhost:3000",
        "Sec-Fetch-Site": "same-site",
        "Content-Type": "application/json",
    },
    "Origin only (older browsers)": {"Origin": EVIL, "Content-Type": "application/x-www-form-urlencoded"},
    "sandboxed page": {"Origin": "null", "Content-Type": "text/plain"},
    "Sec-Fetch-Site only": {"Sec-Fetch-Site": "cross-site"},
}


@pytest.mark.parametrize("kind", sorted(CROSS_SITE))
def test_every_write_route_refuses_cross_site_requests(
    app: FastAPI, client: TestClient, sqlite_db: Database, kind: str
) -> None:
    for method, path, _ in write_routes(app):
        r = client.request(method, path, content=BATCH, headers=CROSS_SITE[kind])
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        text = r.text
        assert "Cross-site request refused" in text and "server.allowed_origins" in text, text
    with sqlite_db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Trajectory)) == 0


def test_documented_write_routes_refuse_bodies_browsers_send_without_asking(
    app: FastAPI, client: TestClient, sqlite_db: Database
) -> None:
    """No Origin at all (a browser too old to send one): only a declared content type is taken."""
    simple = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x")
    for content_type in simple:
        for method, path, documented in write_routes(app):
            r = client.request(method, path, content=BATCH, headers={"Content-Type": content_type})
            if documented:
                assert r.status_code == 415, (method, path, content_type, r.status_code, r.text)
                assert "application/json" in r.text and "Nothing was stored" in r.text
            else:  # the dashboard's forms (same-origin by the Origin rule), OTLP (its own types)
                assert not refused_by_guard(r), (method, path, r.text)
    with sqlite_db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Trajectory)) == 0


def test_the_openai_route_refuses_in_openai_error_shape(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", content=b"{}", headers=CROSS_SITE["json fetch"])
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "cross_site_refused"
    r = client.post("/v1/chat/completions", content=b"{}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["type"] == "invalid_request_error"


def test_programs_and_the_servers_own_pages_still_write(app: FastAPI, client: TestClient) -> None:
    """curl and the SDK (no Origin) and same-origin pages pass the guard on every write route."""
    same_origin = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    for method, path, _ in write_routes(app):
        for headers in ({"Content-Type": "application/json"}, {}, {**same_origin, "X-Learnloop-Action": "1"}):
            r = client.request(method, path, content=b"{}", headers=headers)
            assert not refused_by_guard(r), (method, path, headers, r.status_code, r.text)
    r = client.post("/v1/ingest", content=BATCH, headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200 and r.json()["inserted"] == 1
    # The dashboard's login form: a same-origin form post.
    r = client.post(
        "/login",
        content=b"token=x",
        headers={**same_origin, "Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert r.status_code == 303


def test_the_dashboards_buttons_keep_working_with_a_token(settings: Settings, sqlite_db: Database) -> None:
    from pydantic import SecretStr

    settings = settings.model_copy(update={"api_token": SecretStr("s3cret")})
    with TestClient(create_app(settings, sqlite_db, watch_inbox=False)) as c:
        page = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
        r = c.post(
            "/login",
            content=b"token=s3cret",
            headers={**page, "Content-Type": "application/x-www-form-urlencoded"},
            follow_redirects=False,
        )
        assert r.status_code == 303 and "learnloop_token" in r.headers["set-cookie"]
        # What app.js sends for a button: same-origin fetch, JSON, the action header, the cookie.
        r = c.post(
            "/ui/aliases/learnloop/rollback",
            content=b"{}",
            headers={**page, "Content-Type": "application/json", "X-Learnloop-Action": "1"},
        )
        assert r.status_code not in (401, 403, 415), r.text
        r = c.post(
            "/ui/aliases/learnloop/rollback",
            content=b"{}",
            headers={**CROSS_SITE["json fetch"], "X-Learnloop-Action": "1"},
        )
        assert r.status_code == 403


def test_allowed_origins_may_write(settings: Settings, sqlite_db: Database) -> None:
    proxy = "https://learnloop.example.com"
    settings = settings.model_copy(
        update={"server": settings.server.model_copy(update={"allowed_origins": [proxy]})}
    )
    with TestClient(create_app(settings, sqlite_db, watch_inbox=False)) as c:
        headers = {"Origin": proxy, "Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}
        assert c.post("/v1/ingest", content=BATCH, headers=headers).status_code == 200
        headers["Origin"] = "https://other.example.com"
        assert c.post("/v1/ingest", content=BATCH, headers=headers).status_code == 403


def test_a_route_declaring_another_content_type_takes_it(app: FastAPI, client: TestClient) -> None:
    """The hook for bodies that are not JSON (OTLP's protobuf): the route's documented request body."""
    protobuf = "application/x-protobuf"

    @app.post(
        "/test/protobuf",
        openapi_extra={"requestBody": {"content": {protobuf: {"schema": {"type": "string"}}}}},
    )
    async def take(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    assert client.post("/test/protobuf", content=b"\x0a\x01", headers={"Content-Type": protobuf}).json() == {
        "bytes": 2
    }
    r = client.post("/test/protobuf", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert client.post("/v1/ingest", content=b"x", headers={"Content-Type": protobuf}).status_code == 415


def test_a_rebound_domain_is_refused_on_a_loopback_server(app: FastAPI, sqlite_db: Database) -> None:
    """DNS rebinding: evil.example made to resolve to 127.0.0.1 is, to the browser, same-origin."""
    with live_server(app) as url:
        port = url.rsplit(":", 1)[1]
        rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        for method, path in (("GET", "/v1/stats"), ("GET", "/"), ("POST", "/v1/ingest")):
            r = httpx.request(
                method,
                url + path,
                content=BATCH if method == "POST" else None,
                headers={**rebound, "Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"},
            )
            assert r.status_code == 403 and "not a name of this server" in r.text, (path, r.text)
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"app.localhost:{port}"):
            r = httpx.get(url + "/v1/stats", headers={"Host": host})
            assert r.status_code == 200, (host, r.text)
        r = httpx.post(
            url + "/v1/ingest",
            content=BATCH,
            headers={
                "Origin": url,
                "Sec-Fetch-Site": "same-origin",
                "Content-Type": "application/json",
            },
        )
        assert r.status_code == 200, r.text
    with sqlite_db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Trajectory)) == 1


def test_options_and_405_list_every_method_of_the_path(app: FastAPI, client: TestClient) -> None:
    """A path is the resource of its most concrete template (OpenAPI's reading): /v1/versions/diff
    takes GET, though DELETE /v1/versions/{version_id} would match it too."""
    templates = [(route.path, route.methods) for route in app_routes(app) if route.methods]
    by_path: dict[str, set[str]] = {}
    for path in {_concrete(t) for t, _ in templates}:
        matching = [
            (template.count("{"), methods)
            for template, methods in templates
            if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path)
        ]
        fewest = min(n for n, _ in matching)
        by_path[path] = {m for n, methods in matching if n == fewest for m in methods}
    assert by_path["/v1/versions"] >= {"GET", "POST"} and by_path["/v1/versions/diff"] == {"GET"}
    for path, methods in by_path.items():
        r = client.options(path)
        assert r.status_code == 204, (path, r.status_code, r.text)
        assert set(r.headers["allow"].split(", ")) == methods | {"OPTIONS"}, (path, r.headers["allow"])
        unsupported = next(m for m in ("PATCH", "PUT", "DELETE", "POST", "GET") if m not in methods)
        r = client.request(unsupported, path)
        assert r.status_code == 405, (path, unsupported, r.status_code)
        assert set(r.headers["allow"].split(", ")) == methods | {"OPTIONS"}, (path, r.headers["allow"])
        assert unsupported in str(r.json()["error"])
    assert client.delete("/v1/versions/diff").status_code == 405
    assert client.put("/v1/aliases/history", json={"version": "base"}).status_code == 405
    assert client.options("/no/such/path").status_code == 404
    assert client.options("/static/app.js").headers["allow"] == "GET, HEAD, OPTIONS"
