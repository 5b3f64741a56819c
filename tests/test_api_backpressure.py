"""Load shedding and an unreachable database, through the real app on a real uvicorn server."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
from sqlalchemy import func, select

from api_support import free_port, live_server
from helpers import chat
from learnloop.api import create_app
from learnloop.config import Settings
from learnloop.store import Database, ingest, parse_batch
from learnloop.store.models import Trajectory


def _batch(*ids: str) -> dict:
    return {"trajectories": [{"id": i, "messages": chat(f"q-{i}", "a")} for i in ids]}


def test_full_queue_answers_429_with_retry_after(settings: Settings, db: Database) -> None:
    settings = settings.model_copy(
        update={"server": settings.server.model_copy(update={"ingest_queue_size": 1})}
    )
    app = create_app(settings, db, watch_inbox=False)
    gate = app.state.ingest_gate
    first: dict[str, httpx.Response] = {}
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        # Hold the row (PostgreSQL) or the write lock (SQLite) the first request needs, so it stays in flight.
        with db.session() as held:
            ingest(held, parse_batch(_batch("held")))
            t = threading.Thread(
                target=lambda: first.update(r=http.post("/v1/ingest", json=_batch("held", "other")))
            )
            t.start()
            deadline = time.monotonic() + 60
            while gate.in_flight < 1:
                assert time.monotonic() < deadline, "first request never got in flight"
                time.sleep(0.01)
            with httpx.Client(base_url=url, timeout=30) as http2:
                shed = http2.post("/v1/ingest", json=_batch("third"))
                assert shed.status_code == 429
                assert int(shed.headers["Retry-After"]) >= 1
                assert "full" in shed.json()["error"]
                assert http2.get("/v1/trajectories/third").status_code == 404  # reads are not gated
        t.join(60)
        assert first["r"].status_code == 200, first["r"].text
        assert first["r"].json()["inserted"] == 1 and first["r"].json()["duplicates"] == 1
        assert gate.in_flight == 0
        again = http.post("/v1/ingest", json=_batch("third"))
        assert again.status_code == 200 and again.json()["inserted"] == 1
    with db.read_session() as s:
        assert set(s.scalars(select(Trajectory.id))) == {"held", "other", "third"}


def test_unreachable_postgres_answers_503_with_retry_after(settings: Settings) -> None:
    dead = Database(
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test", connect_args={"connect_timeout": 3}
    )
    app = create_app(settings, dead, watch_inbox=False)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        r = http.post("/v1/ingest", json=_batch("a"))
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert "Cannot reach the database" in r.json()["error"]
        health = http.get("/healthz")
        assert health.status_code == 503 and "Retry-After" in health.headers


def test_vanished_sqlite_file_answers_503_and_recovers(settings: Settings, tmp_path) -> None:
    folder = tmp_path / "gone"
    database = Database(f"sqlite:///{folder / 'learnloop.db'}")
    database.upgrade()
    app = create_app(settings, database, watch_inbox=False)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        database.engine.dispose()
        shutil.rmtree(folder)
        r = http.post("/v1/ingest", json=_batch("a"))
        assert r.status_code == 503 and "Retry-After" in r.headers, r.text
        folder.mkdir()
        database.upgrade()
        assert http.post("/v1/ingest", json=_batch("a")).status_code == 200
    with database.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Trajectory)) == 1
    database.dispose()


def test_sqlite_write_lock_timeout_answers_503(settings: Settings, tmp_path) -> None:
    from sqlalchemy import event

    database = Database(f"sqlite:///{tmp_path / 'locked.db'}")

    @event.listens_for(database.engine, "connect")
    def _short_busy_timeout(dbapi_conn, _record) -> None:  # runs after learnloop's own setup
        dbapi_conn.execute("PRAGMA busy_timeout=200")

    database.upgrade()
    app = create_app(settings, database, watch_inbox=False)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        with database.session() as held:  # another writer holds the lock past the busy timeout
            ingest(held, parse_batch(_batch("held")))
            r = http.post("/v1/ingest", json=_batch("a"))
            assert r.status_code == 503 and "Retry-After" in r.headers, r.text
            assert "locked" in r.json()["error"] and "retry" in r.json()["error"]
        assert http.post("/v1/ingest", json=_batch("a")).status_code == 200
    database.dispose()
