"""The capture SDK end to end into a real database (SQLite and PostgreSQL), in-process and over HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import time
from pathlib import Path

import pytest

import learnloop
from api_support import live_server
from capture_support import counts, load, stored_ids
from learnloop.api import create_app
from learnloop.capture import CaptureClient, current_trajectory, traced
from learnloop.config import Settings
from learnloop.errors import ValidationFailed
from learnloop.store.db import Database
from learnloop.store.models import Trajectory

CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "lookup_order", "arguments": '{"order": 42}'},
}


@pytest.fixture
def make_client(settings: Settings, tmp_path: Path):
    clients: list[CaptureClient] = []

    def make(**options) -> CaptureClient:
        options.setdefault("flush_interval", 0.05)
        options.setdefault("spool_dir", tmp_path / f"spool-{len(clients)}")
        client = CaptureClient(settings, **options)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close(timeout=5)


def record_agent_run(client: CaptureClient) -> str:
    with client.trajectory(
        scenario="support", agent="triage", tags=["web", "v2"], group="g-1", metadata={"user": "u-7"}
    ) as t:
        t.system("You help with orders.")
        t.user("Where is order 42?")
        t.assistant(None, tool_calls=[CALL])
        t.tool({"status": "shipped", "eta": "tomorrow"}, tool_call_id="call_1")
        t.assistant("It ships tomorrow.")
        t.reward("resolved", 1.0)
        t.reward("turns", -0.5)
        t.feedback(thumbs="up", comment="fast")
    return t.id


def test_trajectory_round_trip_in_process(db: Database, make_client) -> None:
    client = make_client(database=db)
    tid = record_agent_run(client)
    assert len(tid) == 32
    assert client.feedback(tid, rating=4.5, correction="It ships tomorrow by noon.") is not None
    assert client.flush(30)

    got = load(db, tid)
    assert [m["role"] for m in got["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert got["messages"][2]["tool_calls"][0]["function"] == CALL["function"]
    assert json.loads(got["messages"][3]["content"]) == {"status": "shipped", "eta": "tomorrow"}
    assert got["messages"][3]["tool_call_id"] == "call_1"
    assert (got["scenario"], got["agent"], got["group"], got["tags"]) == (
        "support",
        "triage",
        "g-1",
        ["web", "v2"],
    )
    assert got["metadata"] == {"user": "u-7"} and got["source"] == "production"
    assert got["scores"] == {"resolved": (1.0, "env"), "turns": (-0.5, "env")}
    # Feedback given inside the block arrives with the trajectory; late feedback comes after it.
    assert got["feedback"][0]["thumbs"] == 1 and got["feedback"][0]["comment"] == "fast"
    assert (
        got["feedback"][1]["rating"] == 4.5
        and got["feedback"][1]["correction"] == "It ships tomorrow by noon."
    )


def test_same_api_over_http_to_a_real_server(db: Database, settings: Settings, make_client) -> None:
    app = create_app(settings, db, watch_inbox=False)
    with live_server(app) as url:
        client = make_client(server_url=url)
        tid = record_agent_run(client)
        client.feedback(tid, success=True)
        assert client.flush(30)
    got = load(db, tid)
    assert got["tags"] == ["web", "v2"] and got["scores"]["resolved"] == (1.0, "env")
    assert [f["success"] for f in got["feedback"]] == [None, True]
    assert client.stats()["transport"] == "http"


def test_exception_is_recorded_and_reraised(db: Database, make_client) -> None:
    client = make_client(database=db)
    with pytest.raises(KeyError):
        with client.trajectory(scenario="crashy") as t:
            t.user("do it")
            raise KeyError("missing tool")
    assert client.flush(30)
    got = load(db, t.id)
    assert got["metadata"]["error"] == {"type": "KeyError", "message": "'missing tool'"}
    assert got["messages"] == [{"role": "user", "content": "do it"}]


def test_traced_sync_and_async_functions(db: Database, make_client) -> None:
    client = make_client(database=db)

    @traced(scenario="adder", client=client)
    def add(a: int, b: int) -> int:
        return a + b

    @traced(client=client, source="teacher")
    async def answer(question: str) -> str:
        t = current_trajectory()
        t.user(question)
        t.assistant("forty-two")
        t.reward("exact", 1.0)
        return "forty-two"

    @traced(scenario="fails", client=client)
    def fail(x: str) -> None:
        raise ValueError("bad x")

    assert add(2, b=3) == 5
    assert asyncio.run(answer("meaning of life?")) == "forty-two"
    with pytest.raises(ValueError, match="bad x"):
        fail("y")
    assert client.flush(30)

    with db.read_session() as s:
        from sqlalchemy import select

        from learnloop.store.models import Trajectory

        rows = {r.scenario: r for r in s.scalars(select(Trajectory)).all()}
    assert rows["adder"].messages == [
        {"role": "user", "content": '{"a": 2, "b": 3}'},
        {"role": "assistant", "content": "5"},
    ]
    assert rows["adder"].meta["duration_ms"] >= 0
    qual = answer.__qualname__
    assert rows[qual].source.value == "teacher"
    assert rows[qual].messages[-1] == {"role": "assistant", "content": "forty-two"}
    assert rows["fails"].meta["error"]["type"] == "ValueError" and rows["fails"].messages == [
        {"role": "user", "content": "y"}
    ]


def test_sampling_keeps_the_rare_cases_and_drops_late_feedback_of_dropped(db: Database, make_client) -> None:
    client = make_client(database=db, sample_rate=0.0, keep_if=[lambda r: r.get("scenario") == "vip"])
    ids = {}
    for name in ("plain", "vip", "neg", "fb", "err", "forced"):
        try:
            with client.trajectory(scenario=name) as t:
                t.user("q")
                t.assistant("a")
                if name == "neg":
                    t.reward("quality", -1)
                if name == "fb":
                    t.feedback(thumbs=-1)
                if name == "forced":
                    t.keep()
                if name == "err":
                    raise RuntimeError("x")
        except RuntimeError:
            pass
        ids[name] = t.id
    assert client.feedback(ids["plain"], thumbs=1) is None  # sampled out: nothing to attach it to
    assert client.flush(30)
    assert stored_ids(db) == {ids[n] for n in ("vip", "neg", "fb", "err", "forced")}
    assert client.stats()["rejected"] == 0


def test_sample_rate_between_zero_and_one_keeps_about_that_share(db: Database, make_client) -> None:
    client = make_client(database=db, sample_rate=0.3, default_keep_rules=False)
    kept = 0
    for _ in range(1000):
        t = client.trajectory()
        t.user("q")
        kept += t.record()
    assert 220 < kept < 380
    assert client.flush(30) and counts(db)["trajectories"] == kept


def test_source_marks_teacher_traces(db: Database, make_client) -> None:
    client = make_client(database=db, source="teacher")
    with client.trajectory() as a:
        a.user("q")
        a.assistant("teacher answer")
    with client.trajectory(source="synthetic") as b:
        b.user("q")
    assert client.flush(30)
    assert load(db, a.id)["source"] == "teacher" and load(db, b.id)["source"] == "synthetic"


def test_bad_input_fails_at_the_line_that_made_it(make_client, sqlite_db: Database) -> None:
    client = make_client(database=sqlite_db)
    t = client.trajectory()
    with pytest.raises(ValidationFailed, match="tool_call_id"):
        t.add_message({"role": "tool", "content": "42"})
    with pytest.raises(ValidationFailed, match="role"):
        t.add_message({"role": "robot", "content": "hi"})
    with pytest.raises(ValidationFailed, match="must be a number"):
        t.reward("quality", "great")
    with pytest.raises(ValidationFailed, match="at least one of"):
        client.feedback("some-id")
    with pytest.raises(ValidationFailed, match="thumbs"):
        client.feedback("some-id", thumbs=5)
    with pytest.raises(ValidationFailed, match="source must be one of"):
        client.trajectory(source="prod")
    with pytest.raises(ValidationFailed, match="string or a list"):
        t.user(None)


@pytest.mark.parametrize("transport", ["database", "http"])
def test_records_the_store_refuses_are_kept_aside_and_the_rest_delivered(
    db: Database, settings: Settings, make_client, transport: str
) -> None:
    if transport == "http":
        with live_server(create_app(settings, db, watch_inbox=False)) as url:
            _refused_records_case(db, make_client(server_url=url, batch_size=50))
    else:
        _refused_records_case(db, make_client(database=db, batch_size=50))


def _refused_records_case(db: Database, client: CaptureClient) -> None:
    good = []
    for i in range(5):
        with client.trajectory(scenario="ok") as t:
            t.user(f"q{i}")
        good.append(t.id)
    # Late feedback naming a trajectory the store never saw: the store refuses that batch.
    client.feedback("no-such-trajectory", thumbs=1)
    with client.trajectory(scenario="too-long-" + "x" * 300) as bad:  # scenario over 256 chars
        bad.user("q")
    assert client.flush(30)
    assert stored_ids(db) == set(good)
    rejected = [
        json.loads(line)
        for p in (client.writer.spool.rejected_dir).glob("*.jsonl")
        for line in p.read_text().splitlines()
    ]
    kinds = sorted((r["kind"], r["record"].get("trajectory_id") or r["record"].get("id")) for r in rejected)
    assert kinds == sorted([("feedback", "no-such-trajectory"), ("trajectories", bad.id)])
    assert all(r["reason"] for r in rejected)
    assert client.stats()["rejected"] == 2


def test_module_level_api_configure_flush_shutdown(db: Database, settings: Settings, tmp_path: Path) -> None:
    learnloop.configure(settings, database=db, flush_interval=0.05, spool_dir=tmp_path / "spool")
    try:
        with learnloop.trajectory(scenario="module") as t:
            t.user("hi")
            t.assistant("hello")
        learnloop.reward(t.id, "late_reward", 0.25)
        learnloop.feedback(t.id, thumbs="down")
        assert learnloop.flush(30)
    finally:
        assert learnloop.shutdown(5)
    got = load(db, t.id)
    assert got["scores"] == {"late_reward": (0.25, "env")} and got["feedback"][0]["thumbs"] == -1
    assert not list((tmp_path / "spool").glob("*.json"))


def test_messages_passed_in_are_copied(db: Database, make_client) -> None:
    client = make_client(database=db)
    history = [{"role": "user", "content": "first"}]
    with client.trajectory(messages=history) as t:
        pass
    history[0]["content"] = "changed later by the app"
    history.append({"role": "assistant", "content": "late"})
    assert client.flush(30)
    assert load(db, t.id)["messages"] == [{"role": "user", "content": "first"}]


def _child_records(url: str, spool: str, queue) -> None:
    import learnloop as ll

    ll.configure(database=url, spool_dir=spool, flush_interval=0.05)
    with ll.trajectory(scenario="forked") as t:
        t.user("from the child")
    queue.put((t.id, ll.flush(30)))
    ll.shutdown(5)


def test_a_forked_worker_gets_its_own_writer(db: Database, settings: Settings, tmp_path: Path) -> None:
    import multiprocessing

    learnloop.configure(settings, database=db, flush_interval=0.05, spool_dir=tmp_path / "parent")
    try:
        with learnloop.trajectory(scenario="parent") as p:
            p.user("from the parent")
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        child = ctx.Process(target=_child_records, args=(db.url, str(tmp_path / "child"), q))
        child.start()
        child_id, delivered = q.get(timeout=60)
        child.join(30)
        assert child.exitcode == 0 and delivered
        assert learnloop.flush(30)
    finally:
        learnloop.shutdown(5)
    assert stored_ids(db) == {p.id, child_id}


def test_a_broken_keep_rule_keeps_the_record_and_never_breaks_the_app(db: Database, make_client) -> None:
    def broken(record):
        raise RuntimeError("rule bug")

    client = make_client(database=db, sample_rate=0.0, keep_if=[broken], default_keep_rules=False)
    with client.trajectory() as t:
        t.user("q")
    assert client.flush(30) and stored_ids(db) == {t.id}


def test_a_record_is_stored_as_it_was_when_recorded(db: Database, make_client) -> None:
    # The record is serialized when it is handed over: changing its dicts afterwards (or a datetime
    # in its metadata) changes nothing stored, and nothing waits in the queue as live dicts.
    import datetime as dt

    client = make_client(database=db, flush_interval=5)  # stays queued until flush
    when = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    with client.trajectory(scenario="frozen", metadata={"n": 1, "at": when, "ids": {7}}) as t:
        t.user("q")
        t.assistant("a")
    t.metadata["n"] = 2
    t.messages[0]["content"] = "changed"
    assert client.flush(30)
    got = load(db, t.id)
    assert got["metadata"] == {"n": 1, "at": "2025-01-02T03:04:05+00:00", "ids": [7]}
    assert got["messages"][0]["content"] == "q"


def test_created_at_is_when_recorded_not_when_delivered(tmp_path: Path) -> None:
    # The store is down while recording: the spool delivers later, but the time is the recording's.
    url = f"sqlite:///{tmp_path / 'late.db'}"
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = CaptureClient(
        Settings(data_dir=tmp_path / "data"), server_url=down, spool_dir=tmp_path / "spool"
    )
    before = dt.datetime.now(dt.UTC)
    with client.trajectory(scenario="late") as t:
        t.user("q")
        t.assistant("a")
    recorded = dt.datetime.now(dt.UTC)
    assert not client.flush(0.5)
    client.close(0.1)
    time.sleep(1.1)
    later = CaptureClient(Settings(data_dir=tmp_path / "data"), database=url, spool_dir=tmp_path / "spool")
    assert later.flush(30)
    later.close(5)
    db = Database(url)
    with db.read_session() as s:
        row = s.get(Trajectory, t.id)
        created, ingested = (v.replace(tzinfo=v.tzinfo or dt.UTC) for v in (row.created_at, row.ingested_at))
    db.dispose()
    assert before <= created <= recorded, (before, created, recorded)
    assert ingested - created > dt.timedelta(seconds=1)


def test_keys_that_are_not_strings_are_stored_as_strings(db: Database, make_client) -> None:
    client = make_client(database=db)
    with client.trajectory(scenario="keys", metadata={"by_step": {1: "plan", 2: "act"}, "ok": True}) as t:
        t.user("q")
        t.assistant("a")
    assert client.flush(30)
    assert load(db, t.id)["metadata"] == {"by_step": {"1": "plan", "2": "act"}, "ok": True}


def test_a_lone_surrogate_is_stored_as_a_replacement_character(db: Database, make_client) -> None:
    # Half of an emoji (a lone UTF-16 surrogate) cannot be written as UTF-8: the record is kept
    # with U+FFFD in its place instead of being lost whole.
    client = make_client(database=db)
    with client.trajectory(scenario="cut", metadata={"note": "tail \ud83d"}) as t:
        t.user("smile \ud83d\ude42 and half \ud83d")
        t.assistant("ok")
    assert client.flush(30)
    got = load(db, t.id)
    assert got["messages"][0]["content"] == "smile \U0001f642 and half \ufffd"
    assert got["metadata"] == {"note": "tail \ufffd"}
