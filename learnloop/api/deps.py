"""Typed dependencies shared by the routes."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import threading
from collections.abc import Iterator
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import Depends, HTTPException, Path, Query, Request, Security
from fastapi.security import HTTPBearer
from pydantic import SecretStr

from learnloop.config import Settings
from learnloop.ids import ROW_ID_MAX
from learnloop.store.db import Database

# Seconds a client is told to wait when the ingest gate is full.
INGEST_RETRY_AFTER = 1


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Database:
    return request.app.state.db


def _bearer_bytes(request: Request) -> bytes | None:
    """The bearer token as the client sent it, in bytes (None without one).

    Starlette decodes header values as latin-1, so encoding back to latin-1 gives the exact bytes
    on the wire: a token with non-ASCII bytes is then compared, not a crash (``compare_digest``
    refuses non-ASCII ``str``).
    """
    scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return given.strip().encode("latin-1")


def token_matches(given: bytes | str | None, expected: SecretStr) -> bool:
    """Constant-time comparison of a token as bytes (text given as UTF-8): any input answers
    True or False, never an error (``secrets.compare_digest`` raises on non-ASCII ``str``)."""
    if given is None:
        return False
    if isinstance(given, str):
        given = given.encode("utf-8", "surrogatepass")
    return hmac.compare_digest(given, expected.get_secret_value().encode("utf-8", "surrogatepass"))


def bearer_matches(request: Request, expected: SecretStr) -> bool:
    """Whether the request's ``Authorization: Bearer`` token is ``expected`` (compared as bytes)."""
    return token_matches(_bearer_bytes(request), expected)


def _check_token(request: Request, accepted: list[SecretStr], what: str) -> None:
    given = _bearer_bytes(request)
    # Every accepted token is compared (no early exit), each in constant time.
    ok = given is not None and sum(token_matches(given, t) for t in accepted) > 0
    if not ok:
        raise HTTPException(
            status_code=401,
            detail=f"Missing or wrong bearer token: {what} need 'Authorization: Bearer <token>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )


# Declared as security schemes (not header parameters) so the OpenAPI document shows the token as
# what it is; ``learnloop.api.openapi`` turns the two into one bearer scheme, required where the
# settings make it so. They only mark the routes: the comparison is ours, on bytes.
WRITE_SCHEME = HTTPBearer(scheme_name="learnloopWrite", auto_error=False)
READ_SCHEME = HTTPBearer(scheme_name="learnloopRead", auto_error=False)
# The OpenAI-compatible routes check serving.api_key (else the write token) themselves, to answer in
# OpenAI's error shape; this only marks them for the document.
SERVING_SCHEME = HTTPBearer(scheme_name="learnloopServing", auto_error=False)


def require_write_token(request: Request, _: Annotated[Any, Security(WRITE_SCHEME)] = None) -> None:
    """When LEARNLOOP_API_TOKEN is set, writes need `Authorization: Bearer <token>`.

    Routes that take a
    body read it themselves after this check, so a client without the token gets 401 whatever
    it sends, and its body is never parsed.
    """
    token = request.app.state.settings.api_token
    if token is not None:
        _check_token(request, [token], "writes (LEARNLOOP_API_TOKEN)")


def require_read_token(request: Request, _: Annotated[Any, Security(READ_SCHEME)] = None) -> None:
    """When ``server.read_token`` is set, reads need it (or the write token) as a bearer token."""
    settings = request.app.state.settings
    read = settings.server.read_token
    if read is not None:
        _check_token(
            request,
            [read] + ([settings.api_token] if settings.api_token else []),
            "reads (server.read_token)",
        )


# -- the dashboard's login ----------------------------------------------------------------------

SESSION_COOKIE = "learnloop_session"
# Before, the login cookie held the token itself (and a token outside latin-1 could not be sent):
# login and logout drop it.
LEGACY_COOKIE = "learnloop_token"
# A custom header a cross-site form cannot send: writes authenticated by the cookie need it.
ACTION_HEADER = "x-learnloop-action"
Role = Literal["write", "read"]


def session_value(token: SecretStr) -> str:
    """What the login cookie holds for ``token``: an HMAC-SHA256 keyed by the token, in hex.

    ASCII whatever characters the token has, and not the token: a leaked cookie opens the
    dashboard, never the API's bearer auth, and changing the token logs every browser out.
    """
    key = token.get_secret_value().encode("utf-8", "surrogatepass")
    return hmac.new(key, b"learnloop dashboard session", hashlib.sha256).hexdigest()


def _session_is(request: Request, token: SecretStr) -> bool:
    cookie = request.cookies.get(SESSION_COOKIE)
    return bool(cookie) and token_matches(cookie, SecretStr(session_value(token)))


def dashboard_role(request: Request, settings: Settings) -> Role | None:
    """Whose request this is, by its bearer token or its login cookie: ``write`` (the write token),
    ``read`` (the read token) or None."""
    write, read = settings.api_token, settings.server.read_token
    if write is not None and (bearer_matches(request, write) or _session_is(request, write)):
        return "write"
    if read is not None and (bearer_matches(request, read) or _session_is(request, read)):
        return "read"
    return None


def login_role(given: str, settings: Settings) -> Role | None:
    """Which token the login form was given (None: neither)."""
    if settings.api_token is not None and token_matches(given, settings.api_token):
        return "write"
    read = settings.server.read_token
    if read is not None and token_matches(given, read):
        return "read"
    return None


def can_read_dashboard(request: Request, settings: Settings) -> bool:
    """Without ``server.read_token`` the dashboard is open to read; with it, it needs a login."""
    return settings.server.read_token is None or dashboard_role(request, settings) is not None


def can_steer_dashboard(request: Request, settings: Settings) -> bool:
    """The dashboard's buttons: with a write token set, that token (as a bearer token, or the login
    cookie with the action header); without one, whoever may read."""
    if settings.api_token is None:
        return can_read_dashboard(request, settings)
    if bearer_matches(request, settings.api_token):
        return True
    return _session_is(request, settings.api_token) and request.headers.get(ACTION_HEADER) == "1"


def login_url(request: Request) -> str:
    """The login page, with the page asked for to come back to."""
    back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login?" + urlencode({"next": back})


def require_dashboard_page(request: Request) -> None:
    """A dashboard page: a browser without the login the read token asks for goes to the login page."""
    if not can_read_dashboard(request, request.app.state.settings):
        raise HTTPException(
            303, "Log in first: the dashboard needs server.read_token.", {"Location": login_url(request)}
        )


def require_dashboard_read(request: Request) -> None:
    """The dashboard's fragments, streams and data: 401 without the login the read token asks for."""
    if not can_read_dashboard(request, request.app.state.settings):
        raise HTTPException(
            401,
            "The dashboard needs a login (server.read_token is set): log in at /login, "
            "or send Authorization: Bearer <token>.",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_dashboard_write(request: Request) -> None:
    """The dashboard's buttons: 401 unless ``can_steer_dashboard``."""
    if not can_steer_dashboard(request, request.app.state.settings):
        raise HTTPException(
            401, "This action needs the API token: log in at /login (or send Authorization: Bearer <token>)."
        )


class IngestGate:
    """Bounds the ingest requests in flight; past the bound the API sheds load with 429."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def acquire(self) -> bool:
        with self._lock:
            if self._in_flight >= self.capacity:
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1


@contextlib.contextmanager
def ingest_slot(request: Request) -> Iterator[None]:
    """Hold one of the gate's slots; past capacity answer 429 with Retry-After.

    Taken by the write routes once the body has been read: a slow client streaming its body
    holds no slot meanwhile, and the slot is freed before the response goes out, so a client
    that got its answer can send the next batch without meeting its own slot.
    """
    gate: IngestGate = request.app.state.ingest_gate
    if not gate.acquire():
        raise HTTPException(
            status_code=429,
            detail=f"Ingest queue is full ({gate.capacity} requests in flight); "
            "retry after the Retry-After seconds.",
            headers={"Retry-After": str(INGEST_RETRY_AFTER)},
        )
    try:
        yield
    finally:
        gate.release()


def request_actor(request: Request, given: str | None) -> str:
    """Who a write came from, for the alias log and events: ``api-token`` when a token guards
    writes (else ``api``), with the name the client gave after a colon."""
    who = "api-token" if request.app.state.settings.api_token is not None else "api"
    return f"{who}:{given}" if given else who


async def mark_serving_key(_: Annotated[Any, Security(SERVING_SCHEME)] = None) -> None:
    """Marks a route as protected by serving.api_key (the route checks the key itself). Async, so
    FastAPI does not hop to a worker thread for it on every chat completion."""


RowIdPath = Annotated[int, Path(ge=0, le=ROW_ID_MAX)]
RowIdQuery = Annotated[int | None, Query(ge=0, le=ROW_ID_MAX)]

SettingsDep = Annotated[Settings, Depends(get_settings)]
DbDep = Annotated[Database, Depends(get_db)]
WriteAuth = Depends(require_write_token)
ReadAuth = Depends(require_read_token)
ServingKey = Depends(mark_serving_key)
DashboardPage = Depends(require_dashboard_page)
DashboardRead = Depends(require_dashboard_read)
DashboardWrite = Depends(require_dashboard_write)
