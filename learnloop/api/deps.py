"""Typed dependencies shared by the routes."""

from __future__ import annotations

import contextlib
import hmac
import threading
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Query, Request, Security
from fastapi.security import HTTPBearer
from pydantic import SecretStr

from learnloop.config import Settings
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


def mark_serving_key(_: Annotated[Any, Security(SERVING_SCHEME)] = None) -> None:
    """Marks a route as protected by serving.api_key (the route checks the key itself)."""


# Row ids (jobs, evaluations, datasets) fit PostgreSQL's integer; a larger one is a 422 naming the
# parameter, not a driver overflow (SQLite raised OverflowError past 2**63: a 500).
ROW_ID_MAX = 2**31 - 1
RowIdPath = Annotated[int, Path(ge=0, le=ROW_ID_MAX)]
RowIdQuery = Annotated[int | None, Query(ge=0, le=ROW_ID_MAX)]

SettingsDep = Annotated[Settings, Depends(get_settings)]
DbDep = Annotated[Database, Depends(get_db)]
WriteAuth = Depends(require_write_token)
ReadAuth = Depends(require_read_token)
ServingKey = Depends(mark_serving_key)
