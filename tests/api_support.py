"""Test support for the API: a real uvicorn server in a thread, free ports, a poisoned-row trigger."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from sqlalchemy import text

import learnloop
from learnloop.store.db import Database

REPO_ROOT = Path(learnloop.__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free port (lifespan included); yield its base URL."""
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on connections of a socket that says so, and
    # without it each response waits ~40 ms on Nagle and the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a `python -m learnloop` subprocess: this checkout on the path, no stray LEARNLOOP_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNLOOP_")}
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["LEARNLOOP_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


LEARNLOOP = [sys.executable, "-m", "learnloop"]


@contextlib.contextmanager
def poisoned_scores(db: Database, name: str = "poison") -> Iterator[None]:
    """A real database trigger that refuses any score called ``name`` (a failure at the database level)."""
    with db.engine.begin() as conn:
        if db.dialect == "sqlite":
            conn.exec_driver_sql(
                f"CREATE TRIGGER poison_scores BEFORE INSERT ON scores WHEN NEW.name = '{name}' "
                "BEGIN SELECT RAISE(ABORT, 'poisoned score refused by trigger'); END"
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION poison_scores_fn() RETURNS trigger AS $$ BEGIN "
                    f"IF NEW.name = '{name}' THEN RAISE EXCEPTION 'poisoned score refused by trigger'; "
                    "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER poison_scores BEFORE INSERT ON scores FOR EACH ROW "
                    "EXECUTE FUNCTION poison_scores_fn()"
                )
            )
    try:
        yield
    finally:
        with db.engine.begin() as conn:
            if db.dialect == "sqlite":
                conn.exec_driver_sql("DROP TRIGGER poison_scores")
            else:
                conn.execute(text("DROP TRIGGER poison_scores ON scores"))
                conn.execute(text("DROP FUNCTION poison_scores_fn()"))
