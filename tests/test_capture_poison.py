"""A record the store cannot take never holds back delivery (issue 16, point 1, the writer's side).

The record of the issue: a ``created_at`` of ``0001-01-01T00:00:00+01:00`` (UTC is then in year
0, which Python's datetime cannot hold). Whether the store refuses it cleanly or fails in a way
nobody planned for, its 6 valid neighbours and every later batch must be delivered, and it alone
set aside in ``spool/rejected`` with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from api_support import live_server
from capture_support import stored_ids
from learnloop.api import create_app
from learnloop.capture import CaptureClient
from learnloop.capture.transports import DatabaseTransport
from learnloop.capture.writer import FEEDBACK, TRAJECTORY
from learnloop.config import Settings
from learnloop.store.db import Database

POISON_AT = "0001-01-01T00:00:00+01:00"


def _rejected(spool: Path) -> list[dict[str, Any]]:
    files = (spool / "rejected").glob("*.jsonl")
    return [json.loads(line) for p in files for line in p.read_text().splitlines()]


def _record_with_poison(client: CaptureClient, created_at: str = POISON_AT) -> tuple[list[str], str]:
    """6 valid trajectories around one with the poison created_at, then a later batch."""
    good = []
    for i in range(6):
        if i == 3:
            client.writer.submit(
                TRAJECTORY,
                {"id": "poison", "created_at": created_at, "messages": [{"role": "user", "content": "q"}]},
            )
        with client.trajectory(scenario="ok") as t:
            t.user(f"q{i}")
        good.append(t.id)
    assert client.flush(60), client.stats()
    with client.trajectory(scenario="later") as t:  # a later batch is not held back either
        t.user("after")
    client.feedback(t.id, thumbs=1)
    good.append(t.id)
    return good, t.id


def _check(db: Database, client: CaptureClient, spool: Path, good: list[str], reason: str) -> None:
    assert client.flush(60), client.stats()
    assert stored_ids(db) == set(good)
    rejected = _rejected(spool)
    assert [(r["kind"], r["record"]["id"]) for r in rejected] == [("trajectories", "poison")]
    assert reason in rejected[0]["reason"], rejected[0]["reason"]
    assert client.stats()["rejected"] == 1 and client.stats()["pending_batches"] == 0


@pytest.mark.parametrize("transport", ["database", "http"])
def test_a_record_with_an_out_of_range_datetime_is_set_aside_and_the_rest_delivered(
    db: Database, settings: Settings, tmp_path: Path, transport: str
) -> None:
    spool = tmp_path / "spool"
    options = dict(spool_dir=spool, flush_interval=0.05, batch_size=50, max_backoff=0.2)
    if transport == "http":
        with live_server(create_app(settings, db, watch_inbox=False)) as url:
            client = CaptureClient(settings, server_url=url, **options)
            try:
                good, _ = _record_with_poison(client)
                _check(db, client, spool, good, "")
            finally:
                client.close(5)
    else:
        client = CaptureClient(settings, database=db, **options)
        try:
            good, _ = _record_with_poison(client)
            _check(db, client, spool, good, "")
        finally:
            client.close(5)


class _BrokenOnPoison(DatabaseTransport):
    """The store as it was before it learnt to refuse such a datetime: an error nobody planned for."""

    def send(self, body: bytes) -> None:
        if POISON_AT.encode() in body:
            raise OverflowError("date value out of range")
        super().send(body)


def test_an_unforeseen_error_in_process_is_retried_then_only_the_failing_record_set_aside(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    client = CaptureClient(
        settings,
        transport=_BrokenOnPoison(db),
        spool_dir=spool,
        flush_interval=0.05,
        batch_size=50,
        max_backoff=0.2,
    )
    try:
        good, _ = _record_with_poison(client)
        _check(db, client, spool, good, "OverflowError: date value out of range")
        assert client.stats()["retries"] >= 2  # tried again before it was split: it might have been passing
    finally:
        client.close(5)


def test_an_unforeseen_server_error_over_http_is_retried_then_only_the_failing_record_set_aside(
    db: Database, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from learnloop.api.routes import ingest as route

    real_ingest = route.ingest

    def broken_on_poison(session: Any, batch: Any, **kw: Any) -> Any:
        # The store as it was before it refused such a datetime; the record itself is valid here,
        # so the server's validation lets it through and the route fails: a 500.
        if any(t.get("id") == "poison" for t in batch.get("trajectories") or []):
            raise OverflowError("date value out of range")
        return real_ingest(session, batch, **kw)

    monkeypatch.setattr(route, "ingest", broken_on_poison)
    spool = tmp_path / "spool"
    with live_server(create_app(settings, db, watch_inbox=False)) as url:
        client = CaptureClient(
            settings, server_url=url, spool_dir=spool, flush_interval=0.05, batch_size=50, max_backoff=0.2
        )
        try:
            good, _ = _record_with_poison(client, created_at="2000-01-01T00:00:00+00:00")
            _check(db, client, spool, good, "500")
        finally:
            client.close(5)


def test_poison_feedback_is_set_aside_and_its_trajectory_kept(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    client = CaptureClient(settings, database=db, spool_dir=spool, flush_interval=0.05, batch_size=50)
    try:
        with client.trajectory() as t:
            t.user("q")
        client.writer.submit(FEEDBACK, {"trajectory_id": t.id, "thumbs": 1, "created_at": POISON_AT})
        client.feedback(t.id, rating=3)
        assert client.flush(60), client.stats()
    finally:
        client.close(5)
    assert stored_ids(db) == {t.id}
    assert [(r["kind"], r["record"]["created_at"]) for r in _rejected(spool)] == [("feedback", POISON_AT)]
