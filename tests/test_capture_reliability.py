"""Nothing lost, nothing duplicated: real processes killed,
real servers and databases that vanish and return."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from api_support import REPO_ROOT, free_port, live_server
from capture_support import TcpProxy, counts, serve_on, spooled_records, stored_ids, wait_for
from learnloop.api import create_app
from learnloop.capture import CaptureClient
from learnloop.capture.spool import Spool
from learnloop.capture.writer import dumps
from learnloop.config import Settings
from learnloop.store import Database, ingest, parse_batch

APP = [sys.executable, str(Path(__file__).parent / "capture_app.py")]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNLOOP_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _spooled(spool_dir: Path) -> tuple[int, int]:
    trajectories = feedback = 0
    for p in spool_dir.glob("*.json"):
        data = p.read_bytes()
        if data.endswith(b"\n"):
            body = json.loads(data)
            trajectories += len(body.get("trajectories") or [])
            feedback += len(body.get("feedback") or [])
    return trajectories, feedback


@contextmanager
def write_locked(db: Database):
    """Hold the database's write lock from another connection, so the app's writer blocks mid-flush."""
    if db.dialect == "sqlite":
        conn = sqlite3.connect(make_url(db.url).database, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
    else:
        with db.engine.connect() as conn:
            tx = conn.begin()
            conn.execute(text("LOCK TABLE trajectories IN ACCESS EXCLUSIVE MODE"))
            try:
                yield
            finally:
                tx.rollback()


def test_kill_9_mid_flush_then_next_start_delivers_without_duplicates(db: Database, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    n = 100
    app = subprocess.Popen(
        [*APP, db.url, str(spool_dir), "record", str(n)],
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(app.stdout.readline() or "{}")
        assert first.get("phase") == "delivered", app.stderr.read()
        assert counts(db)["trajectories"] == 20
        with write_locked(db):
            app.stdin.write("go\n")
            app.stdin.flush()
            later = json.loads(app.stdout.readline())["ids"]
            # The batch is written ahead to the spool, then the writer blocks on the lock: kill it there.
            wait_for(lambda: _spooled(spool_dir) == (n, 20), "the in-flight batch to be on disk")
            time.sleep(0.2)
            app.send_signal(signal.SIGKILL)
            app.wait(10)
        assert app.returncode == -signal.SIGKILL
    finally:
        if app.poll() is None:
            app.kill()
    assert counts(db)["trajectories"] == 20  # the killed flush committed nothing

    again = subprocess.run(
        [*APP, db.url, str(spool_dir), "deliver"], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["delivered"] is True
    c = counts(db)
    assert c["trajectories"] == c["distinct_ids"] == 20 + n
    assert stored_ids(db) == set(first["ids"]) | set(later)
    assert c["feedback"] == n // 10 + 20
    assert not list(spool_dir.glob("*.json")), "delivered batches are removed from the spool"


def test_redelivering_a_batch_the_store_already_has_is_a_no_op(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    # A writer killed after the commit but before removing its spool file leaves such a batch behind.
    body = {
        "trajectories": [
            {"id": f"dup-{i}", "messages": [{"role": "user", "content": str(i)}], "feedback": {"thumbs": 1}}
            for i in range(5)
        ],
        "feedback": [{"trajectory_id": "dup-0", "rating": 2, "idempotency_key": "fb-dup-0"}],
    }
    with db.session() as s:
        ingest(s, parse_batch(body))
    before = counts(db)
    dead = Spool(tmp_path / "spool")
    dead.write(dumps(body))
    os.close(dead._lock_fd)  # the process died: its lock is released, its file left behind
    dead._lock_fd = -1

    client = CaptureClient(settings, database=db, spool_dir=tmp_path / "spool", flush_interval=0.05)
    try:
        assert client.flush(30)
        assert client.stats()["delivered"] == 6
    finally:
        client.close(5)
    assert counts(db) == before
    assert not list((tmp_path / "spool").glob("*.json"))


def test_server_down_during_capture_nothing_lost(db: Database, settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"  # nothing listens here yet
    spool_dir = tmp_path / "spool"
    opts = dict(server_url=url, spool_dir=spool_dir, flush_interval=0.05, batch_size=64, max_backoff=0.3)

    # A first app run records while the server is down and exits: its records stay spooled.
    first = CaptureClient(settings, **opts)
    ids = []
    for i in range(150):
        with first.trajectory(scenario="offline") as t:
            t.user(f"q{i}")
            t.assistant("a")
        ids.append(t.id)
    first.feedback(ids[0], thumbs=-1)
    started = time.monotonic()
    assert first.close(timeout=0.5) is False
    assert time.monotonic() - started < 5, "shutdown is bounded"
    assert {r["id"] for r in spooled_records(spool_dir)} == set(ids)

    # The next run keeps recording while the server is still down, then the server comes up.
    second = CaptureClient(settings, **opts)
    try:
        for i in range(50):
            with second.trajectory(scenario="still-offline") as t:
                t.user(f"later {i}")
            ids.append(t.id)
        wait_for(lambda: second.stats()["retries"] > 0, "a failed delivery attempt")
        assert counts(db)["trajectories"] == 0
        with serve_on(create_app(settings, db, watch_inbox=False), port):
            assert second.flush(30)
    finally:
        second.close(5)
    c = counts(db)
    assert c["trajectories"] == c["distinct_ids"] == 200 and stored_ids(db) == set(ids)
    assert c["feedback"] == 1
    assert not list(spool_dir.glob("*.json"))


@pytest.fixture
def vanishing_database(db: Database, tmp_path: Path):
    """(url, bring_up) for a database that cannot be reached until bring_up() is called.

    SQLite: the file's folder does not exist yet (a volume not mounted). PostgreSQL: the URL points
    at a port where a proxy to the real server starts only on bring_up().
    """
    if db.dialect == "sqlite":
        folder = tmp_path / "mnt"
        url = f"sqlite:///{folder / 'learnloop.db'}"
        yield url, lambda: folder.mkdir(), lambda: Database(url)
    else:
        port = free_port()
        proxy = TcpProxy(port, ("127.0.0.1", make_url(db.url).port or 5432))
        url = make_url(db.url).set(port=port).render_as_string(hide_password=False)
        yield url, proxy.start, lambda: db
        proxy.stop()


def test_database_unreachable_spools_then_delivers(
    vanishing_database, settings: Settings, tmp_path: Path
) -> None:
    url, bring_up, reader = vanishing_database
    target = Database(url)
    if target.dialect == "sqlite":
        Path(
            make_url(url).database
        ).parent.rmdir()  # make_engine created the folder; the 'volume' is not there
    client = CaptureClient(
        settings, database=target, spool_dir=tmp_path / "spool", flush_interval=0.05, max_backoff=0.3
    )
    try:
        ids = []
        for i in range(80):
            with client.trajectory(scenario="db-down") as t:
                t.user(f"q{i}")
                t.reward("r", i)
            ids.append(t.id)
        client.feedback(ids[-1], success=True)
        wait_for(lambda: client.stats()["retries"] >= 2, "delivery attempts against the unreachable database")
        assert client.flush(0.5) is False
        assert len(spooled_records(tmp_path / "spool")) == 80
        bring_up()
        assert client.flush(30)
    finally:
        client.close(5)
    db = reader()
    c = counts(db)
    assert c["trajectories"] == c["distinct_ids"] == 80 and stored_ids(db) >= set(ids)
    assert (c["scores"], c["feedback"]) == (80, 1)


def test_retry_after_from_the_server_is_honoured(
    sqlite_db: Database, settings: Settings, tmp_path: Path
) -> None:
    app = create_app(settings, sqlite_db, watch_inbox=False)
    attempts: list[float] = []

    async def overloaded_once(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/v1/ingest":
            attempts.append(time.monotonic())
            if len(attempts) == 1:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 429,
                        "headers": [(b"retry-after", b"1"), (b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": b'{"error": "queue full"}'})
                return
        await app(scope, receive, send)

    with live_server(overloaded_once) as url:
        client = CaptureClient(
            settings, server_url=url, spool_dir=tmp_path / "spool", flush_interval=0.05, max_backoff=0.05
        )
        try:
            with client.trajectory() as t:
                t.user("q")
            wait_for(lambda: len(attempts) >= 1, "the first attempt")
            assert client.flush(30)  # an explicit flush still waits out the server's Retry-After
        finally:
            client.close(5)
    assert len(attempts) == 2 and attempts[1] - attempts[0] >= 0.95
    assert stored_ids(sqlite_db) == {t.id}


def test_bearer_token_is_sent(sqlite_db: Database, settings: Settings, tmp_path: Path) -> None:
    guarded = settings.model_copy(update={"api_token": __import__("pydantic").SecretStr("s3cret")})
    with live_server(create_app(guarded, sqlite_db, watch_inbox=False)) as url:
        wrong = CaptureClient(
            settings, server_url=url, token="nope", spool_dir=tmp_path / "a", flush_interval=0.05
        )
        with wrong.trajectory() as t1:
            t1.user("q")
        assert wrong.flush() is False  # refused token: flush says so at once; kept spooled, not dropped
        assert "token" in (wrong.stats()["last_error"] or "").lower()
        wrong.close(0.2)
        right = CaptureClient(
            settings, server_url=url, token="s3cret", spool_dir=tmp_path / "a", flush_interval=0.05
        )
        try:
            assert right.flush(30)
        finally:
            right.close(5)
    assert stored_ids(sqlite_db) == {t1.id}


def test_full_queue_spills_to_the_spool_and_loses_nothing(
    sqlite_db: Database, settings: Settings, tmp_path: Path
) -> None:
    client = CaptureClient(
        settings,
        database=sqlite_db,
        spool_dir=tmp_path / "spool",
        queue_size=5,
        batch_size=5,
        flush_interval=0.05,
    )
    try:
        with write_locked(sqlite_db):
            ids = []
            for i in range(60):
                with client.trajectory() as t:
                    t.user(f"q{i}")
                ids.append(t.id)
                client.feedback(t.id, rating=i)  # must still reach the store after its trajectory
            assert client.stats()["overflowed"] > 0
        assert client.flush(60)
        assert client.stats()["rejected"] == 0
    finally:
        client.close(5)
    assert stored_ids(sqlite_db) == set(ids)
    assert counts(sqlite_db)["feedback"] == 60


def test_a_batch_file_cut_short_by_a_crash_is_discarded_and_the_rest_delivered(
    sqlite_db: Database, settings: Settings, tmp_path: Path
) -> None:
    dead = Spool(tmp_path / "spool")
    good = dead.write(
        dumps({"trajectories": [{"id": "whole", "messages": [{"role": "user", "content": "x"}]}]})
    )
    torn = dead.next_path()
    torn.write_bytes(b'{"trajectories": [{"id": "torn", "messa')  # killed mid-write, before the fsync
    os.close(dead._lock_fd)
    client = CaptureClient(settings, database=sqlite_db, spool_dir=tmp_path / "spool", flush_interval=0.05)
    try:
        assert client.flush(30)
    finally:
        client.close(5)
    assert stored_ids(sqlite_db) == {"whole"} and not good.exists() and not torn.exists()


def test_normal_exit_delivers_pending_records(db: Database, tmp_path: Path) -> None:
    # flush_interval is 5 s in the app: only the exit hook can have sent these.
    out = subprocess.run(
        [*APP, db.url, str(tmp_path / "spool"), "exit"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert stored_ids(db) == set(json.loads(out.stdout.splitlines()[-1])["ids"])


def test_exit_with_the_server_down_is_bounded_and_spools(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    started = time.monotonic()
    out = subprocess.run(
        [*APP, "unused", str(spool_dir), "exit", f"http://127.0.0.1:{free_port()}"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    ids = json.loads(out.stdout.splitlines()[-1])["ids"]
    assert {r["id"] for r in spooled_records(spool_dir)} == set(ids)
    assert "stay in" in out.stderr  # the app's log says where the records wait
    assert took < 20, f"exit took {took:.1f}s with shutdown_timeout=1"


def test_a_spooled_batch_with_invalid_records_delivers_the_rest(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    # Batches are validated when they are sent: a file left by a dead writer (or written by an
    # older version) with a record that can never be stored delivers the others and sets it aside.
    dead = Spool(tmp_path / "spool")
    good = [{"id": f"ok-{i}", "messages": [{"role": "user", "content": str(i)}]} for i in range(3)]
    bad = {"id": "bad", "scenario": "x" * 300, "messages": [{"role": "user", "content": "q"}]}
    dead.write(dumps({"trajectories": [good[0], bad, *good[1:]]}))
    dead.write(b"this is not JSON")  # complete (newline-terminated) but no batch: kept aside, not retried
    os.close(dead._lock_fd)
    dead._lock_fd = -1

    client = CaptureClient(settings, database=db, spool_dir=tmp_path / "spool", flush_interval=0.05)
    try:
        assert client.flush(30)
        assert client.stats()["delivered"] == 3 and client.stats()["rejected"] == 2
        # flush() returns with the delivered files already removed, not merely sent.
        assert not list((tmp_path / "spool").glob("*.json"))
    finally:
        client.close(5)
    assert stored_ids(db) == {"ok-0", "ok-1", "ok-2"}
    rejected = [
        json.loads(line)
        for p in (tmp_path / "spool" / "rejected").glob("*.jsonl")
        for line in p.read_text().splitlines()
    ]
    assert sorted(r["kind"] for r in rejected) == ["batch", "trajectories"]
    assert next(r for r in rejected if r["kind"] == "trajectories")["record"]["id"] == "bad"


def test_a_spooled_lone_surrogate_is_stored_as_a_replacement_character(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    # A batch file holding text no database can store (a JSON \\ud83d escape: half a character,
    # from another tool or an older version) neither blocks the queue nor is set aside whole:
    # the character becomes U+FFFD, as when such text is recorded.
    dead = Spool(tmp_path / "spool")
    dead.write(
        b'{"trajectories": [{"id": "ok", "messages": [{"role": "user", "content": "q"}]},'
        b' {"id": "cut", "messages": [{"role": "user", "content": "x \\ud83d y"}]}]}'
    )
    os.close(dead._lock_fd)
    dead._lock_fd = -1
    client = CaptureClient(
        settings, database=db, spool_dir=tmp_path / "spool", flush_interval=0.05, max_backoff=0.3
    )
    try:
        assert client.flush(30), client.stats()
    finally:
        client.close(5)
    assert stored_ids(db) == {"ok", "cut"}
    with db.read_session() as s:
        assert s.execute(text("SELECT messages FROM trajectories WHERE id = 'cut'")).scalar() in (
            [{"role": "user", "content": "x \ufffd y"}],
            '[{"role":"user","content":"x \ufffd y"}]',
        )
    assert not (tmp_path / "spool" / "rejected").exists()


def test_flush_leaves_no_delivered_batch_in_the_spool(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    client = CaptureClient(
        settings, database=db, spool_dir=tmp_path / "spool", flush_interval=0.05, batch_size=7
    )
    try:
        for i in range(50):
            with client.trajectory(scenario="flush") as t:
                t.user(f"q{i}")
                t.assistant("a")
        assert client.flush(30)
        assert not list((tmp_path / "spool").glob("*.json"))
        assert counts(db)["trajectories"] == 50
    finally:
        client.close(5)


@pytest.mark.postgres
def test_writer_recovers_when_the_database_drops_its_connections(
    pg_url: str, settings: Settings, tmp_path: Path
) -> None:
    # The writer's engine does not ping before each batch: a connection the server dropped
    # (a restart, an idle timeout) must cost a retry, never a record.
    import uuid

    from sqlalchemy import create_engine

    from conftest import PG_ADMIN_URL

    app = f"ll_writer_{uuid.uuid4().hex[:8]}"
    url = f"{pg_url}&application_name={app}"
    Database(url).upgrade()
    client = CaptureClient(
        settings, database=url, spool_dir=tmp_path / "spool", flush_interval=0.05, max_backoff=0.3
    )
    ids = []
    try:
        for phase in range(2):
            for i in range(20):
                with client.trajectory(scenario="dropped-connections") as t:
                    t.user(f"q{phase}-{i}")
                    t.assistant("a")
                ids.append(t.id)
            assert client.flush(30), client.stats()
            if phase == 0:
                admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
                with admin.connect() as conn:
                    killed = conn.execute(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE application_name = :app"
                        ),
                        {"app": app},
                    ).scalar()
                admin.dispose()
                assert killed >= 1
        assert client.stats()["retries"] >= 1  # the dropped connection was really used, and retried
    finally:
        client.close(5)
    reader = Database(pg_url)
    with reader.read_session() as s:
        stored = set(
            s.execute(text("SELECT id FROM trajectories WHERE scenario = 'dropped-connections'")).scalars()
        )
    reader.dispose()
    assert stored == set(ids)
