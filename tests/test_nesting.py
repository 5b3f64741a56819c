"""Issue 20.5: nesting has a limit. A record nested deeper than ``MAX_DEPTH`` (64) is refused with a
4xx naming the field, whatever the depth (just past the limit, past pydantic's parser at 200, past
orjson's encoder at 254, past Python's recursion limit near 1,000, past orjson's parser at 1,024),
on every way in: the API, the SDK's own checks, ``learnloop import`` and the inbox. A row stored
deeper before the limit existed stays readable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import text

from learnloop.api import create_app
from learnloop.config import Settings
from learnloop.errors import ValidationFailed
from learnloop.jsonio import MAX_DEPTH, _dumps_deep, dumps, loads, path_at, too_deep
from learnloop.store.db import Database
from learnloop.store.records import parse_trajectory

DEPTHS = [MAX_DEPTH, MAX_DEPTH + 1, 199, 300, 995, 5000]


def nested(levels: int) -> str:
    """JSON text of ``levels`` arrays inside one another (``[[...]]``), any depth."""
    return "[" * levels + "]" * levels


def deep(levels: int) -> list[Any]:
    """``levels`` lists inside one another, built without recursion (any depth)."""
    outer: list[Any] = []
    inner = outer
    for _ in range(levels - 1):
        inner.append([])
        inner = inner[0]
    return outer


def line(tid: str, levels: int) -> str:
    """A trajectory whose ``metadata.a`` holds ``levels`` nested arrays: the record is 2 deeper."""
    return (
        f'{{"id": "{tid}", "messages": [{{"role": "user", "content": "hi"}}], '
        f'"metadata": {{"a": {nested(levels)}}}}}'
    )


def record_depth(levels: int) -> int:
    return levels + 2  # the record, its metadata, then the arrays


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings, db, watch_inbox=False), raise_server_exceptions=False) as c:
        yield c


def test_the_walk_and_the_encoders_take_any_depth() -> None:
    value = deep(900)
    assert too_deep(value, 900) is None and len(too_deep(value, 899) or []) == 899
    assert _dumps_deep(value) == nested(900) and loads(nested(900)) == value
    flat: Any = {"k": [1, {"x": "y\u00e9"}, None]}
    assert _dumps_deep(flat) == json.dumps(flat, separators=(",", ":"), ensure_ascii=False)
    assert dumps(deep(3000)) == nested(3000).encode()  # past every recursive encoder
    assert path_at('{"a": [1, {"b": [', 17) == ["a", "1", "b", "0"]


@pytest.mark.parametrize("levels", DEPTHS)
def test_the_api_refuses_a_record_past_the_limit_naming_the_field(client: TestClient, levels: int) -> None:
    body = f'{{"trajectories": [{line("deep", levels)}]}}'
    r = client.post("/v1/ingest", content=body, headers={"Content-Type": "application/json"})
    if record_depth(levels) <= MAX_DEPTH:
        assert r.status_code == 200, r.text
        got = client.get("/v1/trajectories/deep").json()["metadata"]["a"]
        assert got == deep(levels)
        return
    assert r.status_code == 422, r.text
    (problem,) = r.json()["problems"]
    assert problem["loc"].startswith("trajectories.0.metadata.a.0.0"), problem
    assert "levels deep" in problem["msg"]
    assert client.get("/v1/trajectories/deep").status_code == 404


@pytest.mark.parametrize("levels", [300, 995, 5000])
def test_late_feedback_and_other_json_routes_refuse_deep_bodies(client: TestClient, levels: int) -> None:
    ok = client.post("/v1/ingest", content=f'{{"trajectories": [{line("t", 1)}]}}')
    assert ok.status_code == 200
    r = client.post(
        "/v1/trajectories/t/feedback", content=f'{{"rating": 1, "metadata": {{"x": {nested(levels)}}}}}'
    )
    assert r.status_code == 422 and r.json()["problems"][0]["loc"].startswith("metadata.x.0"), r.text
    r = client.post("/v1/jobs", content=f'{{"kind": "score", "payload": {{"p": {nested(levels)}}}}}')
    assert r.status_code == 422 and r.json()["problems"][0]["loc"].startswith("payload.p.0"), r.text
    assert client.get("/v1/jobs").json() == []


@pytest.mark.parametrize("levels", [300, 950])
def test_a_row_stored_deeper_before_the_limit_stays_readable(
    client: TestClient, db: Database, levels: int
) -> None:
    assert client.post("/v1/ingest", content=f'{{"trajectories": [{line("old", 1)}]}}').status_code == 200
    stored = {"a": deep(levels)}
    cast = "CAST(:m AS jsonb)" if db.dialect == "postgresql" else ":m"
    with db.engine.begin() as conn:  # as the API stored it before the limit: past the validation
        conn.execute(
            text(f"UPDATE trajectories SET metadata = {cast} WHERE id = 'old'"), {"m": _dumps_deep(stored)}
        )
    r = client.get("/v1/trajectories/old")
    assert r.status_code == 200, r.text
    assert loads(r.content)["metadata"] == stored


def test_the_sdks_own_checks_refuse_a_deep_message_or_feedback(settings: Settings, tmp_path: Path) -> None:
    from learnloop.capture import CaptureClient

    client = CaptureClient(settings, database=f"sqlite:///{tmp_path / 'x.db'}", spool_dir=tmp_path / "spool")
    try:
        t = client.trajectory()
        with pytest.raises(ValidationFailed, match="levels deep"):
            t.add_message({"role": "user", "content": [{"type": "text", "x": deep(100)}]})
        with pytest.raises(ValidationFailed, match="levels deep"):
            t.feedback(rating=1, metadata={"x": deep(1000)})
    finally:
        client.close(5)


@pytest.mark.parametrize("levels", [300, 1000])
def test_parse_trajectory_names_the_field(levels: int) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_trajectory({"messages": [{"role": "user", "content": "x"}], "metadata": {"a": deep(levels)}})
    assert info.value.problems[0][0].startswith("metadata.a.0.0")


def test_import_and_the_inbox_report_deep_lines(settings: Settings, db: Database, tmp_path: Path) -> None:
    from learnloop.cli.main import cli
    from learnloop.store.inbox import InboxWatcher

    lines = [line("ok", 1)] + [line(f"d{n}", n) for n in (100, 300, 995, 5000)]
    src = tmp_path / "deep.jsonl"
    src.write_text("\n".join(lines) + "\n")
    env = {"LEARNLOOP_DATA_DIR": str(settings.data_dir), "LEARNLOOP_DATABASE_URL": db.url}
    r = CliRunner().invoke(cli, ["import", str(src)], env=env)
    assert r.exit_code == 1 and r.exception is None or isinstance(r.exception, SystemExit), r.output
    assert "Traceback" not in r.output
    for n in (2, 3, 4, 5):
        assert f"line {n}: metadata.a.0.0" in r.output, r.output
    with db.read_session() as s:
        assert s.execute(text("select count(*) from trajectories")).scalar() == 0

    watcher = InboxWatcher(db, settings.model_copy(update={"database_url": db.url}), poll_seconds=0.05)
    inbox = watcher.dirs.inbox
    watcher.dirs.ensure()
    (inbox / "deep.jsonl").write_text(src.read_text())
    outcomes: list[Any] = []
    for _ in range(3):
        outcomes += watcher.poll_once()
    assert [o.status for o in outcomes] == ["failed"], outcomes
    error = (inbox / "failed" / "deep.jsonl.error.txt").read_text()
    assert "line 5: metadata.a.0.0" in error and "levels deep" in error


@pytest.mark.parametrize("transport", ["database", "http"])
def test_the_sdk_sets_a_deep_record_aside_and_delivers_the_rest(
    settings: Settings, db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture, transport: str
) -> None:
    """metadata nested 100 deep (the store refuses it) and 1,000 deep (no encoder on the way takes
    it): each set aside in spool/rejected with the reason, never a traceback, its neighbours stored."""
    from api_support import live_server
    from capture_support import stored_ids
    from learnloop.capture import CaptureClient

    spool = tmp_path / "spool"
    options: dict[str, Any] = dict(spool_dir=spool, flush_interval=0.05, max_backoff=0.2)
    with live_server(create_app(settings, db, watch_inbox=False)) as url:
        if transport == "http":
            client = CaptureClient(settings, server_url=url, **options)
        else:
            client = CaptureClient(settings, database=db, **options)
        try:
            ids = []
            for levels in (1, 100, 1000, 1):
                with client.trajectory(metadata={"deep": deep(levels)}) as t:
                    t.user(f"q{levels}")
                ids.append(t.id)
            assert client.flush(60), client.stats()
        finally:
            client.close(5)
    assert stored_ids(db) == {ids[0], ids[3]}
    rejected = [loads(x) for p in (spool / "rejected").glob("*.jsonl") for x in p.read_text().splitlines()]
    assert sorted(r["record"]["id"] for r in rejected) == sorted([ids[1], ids[2]])
    for r in rejected:
        assert "levels deep" in r["reason"] and "metadata.deep.0" in r["reason"], r["reason"]
        assert too_deep(r["record"]["metadata"]["deep"], 99) is not None  # kept whole, not cut
    assert not [rec for rec in caplog.records if rec.exc_info], [rec.getMessage() for rec in caplog.records]
