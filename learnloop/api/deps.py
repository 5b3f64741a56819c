"""Typed dependencies shared by the routes."""

from __future__ import annotations

import secrets
import threading
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from learnloop.config import Settings
from learnloop.store.db import Database

# Seconds a client is told to wait when the ingest gate is full.
INGEST_RETRY_AFTER = 1


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Database:
    return request.app.state.db


def require_write_token(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> None:
    """When LEARNLOOP_API_TOKEN is set, writes need `Authorization: Bearer <token>`."""
    token = request.app.state.settings.api_token
    if token is None:
        return
    expected = token.get_secret_value()
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), expected):
        raise HTTPException(
            status_code=401,
            detail="Missing or wrong bearer token: send 'Authorization: Bearer <LEARNLOOP_API_TOKEN>'.",
            headers={"WWW-Authenticate": "Bearer"},
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


async def ingest_slot(request: Request) -> AsyncIterator[None]:
    """Hold one of the gate's slots for the request; past capacity answer 429 with Retry-After.

    Async on purpose: it runs on the event loop, so a full gate answers at once instead of
    waiting behind busy worker threads for its own turn.
    """
    gate: IngestGate = request.app.state.ingest_gate
    if not gate.acquire():
        raise HTTPException(
            status_code=429,
            detail=f"Ingest queue is full ({gate.capacity} requests in flight); retry after the Retry-After seconds.",
            headers={"Retry-After": str(INGEST_RETRY_AFTER)},
        )
    # Routes use this with scope="function": the slot is freed before the response goes out,
    # so a client that got its answer can send the next batch without meeting its own slot.
    try:
        yield
    finally:
        gate.release()


SettingsDep = Annotated[Settings, Depends(get_settings)]
DbDep = Annotated[Database, Depends(get_db)]
WriteAuth = Depends(require_write_token)
