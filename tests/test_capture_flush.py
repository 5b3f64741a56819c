"""Issue 20.6: the SDK never hangs. ``flush()`` without a timeout is bounded (30 s by default); it
returns False and says why: at once when the server refuses the token (waiting cannot help), when
the time runs out while the server cannot be reached. Nothing is lost: the records stay spooled and
are delivered once the token (or the server) is right."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import SecretStr

from api_support import free_port, live_server
from capture_support import stored_ids
from learnloop.api import create_app
from learnloop.capture import CaptureClient
from learnloop.capture.spool import spool_status
from learnloop.capture.writer import FLUSH_TIMEOUT
from learnloop.config import Settings
from learnloop.store.db import Database


def _record(client: CaptureClient, n: int) -> list[str]:
    ids = []
    for i in range(n):
        with client.trajectory(scenario="flush") as t:
            t.user(f"q{i}")
        ids.append(t.id)
    return ids


def test_the_default_is_bounded() -> None:
    assert 0 < FLUSH_TIMEOUT <= 60


def test_a_refused_token_ends_flush_at_once_and_nothing_is_lost(
    settings: Settings, sqlite_db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server_settings = settings.model_copy(update={"api_token": SecretStr("right")})
    spool = tmp_path / "spool"
    with live_server(create_app(server_settings, sqlite_db, watch_inbox=False)) as url:
        # A flush_timeout far longer than the test: only the refusal can end this flush.
        client = CaptureClient(
            settings, server_url=url, token="wrong", spool_dir=spool, flush_interval=0.05, flush_timeout=600
        )
        ids = _record(client, 3)
        with caplog.at_level(logging.WARNING, logger="learnloop.capture"):
            assert client.flush() is False
        assert "flush gave up" in caplog.text and "the server refused the token" in caplog.text
        assert "401" in client.stats()["last_error"]
        assert client.close(0) is False
        assert stored_ids(sqlite_db) == set()

        fixed = CaptureClient(settings, server_url=url, token="right", spool_dir=spool, flush_interval=0.05)
        try:
            assert fixed.flush() is True, fixed.stats()
        finally:
            fixed.close(5)
    assert stored_ids(sqlite_db) == set(ids)


def test_an_unreachable_server_ends_flush_when_its_time_is_up(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = CaptureClient(
        settings, server_url=dead, spool_dir=tmp_path / "spool", flush_interval=0.05, flush_timeout=1.0
    )
    try:
        _record(client, 2)
        with caplog.at_level(logging.WARNING, logger="learnloop.capture"):
            assert client.flush() is False
        assert "flush gave up after 1.0s" in caplog.text
        assert "cannot be reached" in caplog.text and dead in caplog.text
    finally:
        client.close(0)
    assert spool_status(tmp_path / "spool")["records"] == 2  # kept for the next start
