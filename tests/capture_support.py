"""Test support for the capture SDK: reading back what reached the store, spool inspection."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from learnloop.store.db import Database
from learnloop.store.models import Feedback, Score, Trajectory


def counts(db: Database) -> dict[str, int]:
    with db.read_session() as s:
        return {
            "trajectories": s.scalar(select(func.count()).select_from(Trajectory)) or 0,
            "distinct_ids": s.scalar(select(func.count(func.distinct(Trajectory.id)))) or 0,
            "feedback": s.scalar(select(func.count()).select_from(Feedback)) or 0,
            "scores": s.scalar(select(func.count()).select_from(Score)) or 0,
        }


def stored_ids(db: Database) -> set[str]:
    with db.read_session() as s:
        return set(s.scalars(select(Trajectory.id)).all())


def load(db: Database, trajectory_id: str) -> dict[str, Any]:
    with db.read_session() as s:
        t = s.get(Trajectory, trajectory_id)
        assert t is not None, f"trajectory {trajectory_id} not stored"
        scores = {
            sc.name: (sc.value, sc.source.value)
            for sc in s.scalars(select(Score).where(Score.trajectory_id == t.id))
        }
        fb = [
            {
                "rating": f.rating,
                "thumbs": f.thumbs,
                "success": f.success,
                "correction": f.correction,
                "comment": f.comment,
            }
            for f in s.scalars(select(Feedback).where(Feedback.trajectory_id == t.id).order_by(Feedback.id))
        ]
        return {
            "id": t.id,
            "scenario": t.scenario,
            "group": t.group_id,
            "agent": t.agent,
            "source": t.source.value,
            "model": t.model,
            "messages": t.messages,
            "tools": t.tools,
            "metadata": t.meta,
            "tags": t.tags,
            "scores": scores,
            "feedback": fb,
        }


def spooled_records(spool_dir: Path) -> list[dict[str, Any]]:
    """Trajectory records in complete spool batch files."""
    out = []
    for p in sorted(spool_dir.glob("*.json")):
        data = p.read_bytes()
        if data.endswith(b"\n"):
            out.extend(json.loads(data).get("trajectories") or [])
    return out


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class TcpProxy:
    """Forwards a local port to ``target``; start() and stop() make a database appear and vanish."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self._server = None
        self._thread = None

    def start(self) -> None:
        import socketserver
        import threading

        target = self.target

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                import selectors
                import socket

                upstream = socket.create_connection(target)
                sel = selectors.DefaultSelector()
                sel.register(self.request, selectors.EVENT_READ, upstream)
                sel.register(upstream, selectors.EVENT_READ, self.request)
                try:
                    while True:
                        for key, _ in sel.select():
                            data = key.fileobj.recv(65536)
                            if not data:
                                return
                            key.data.sendall(data)
                finally:
                    upstream.close()

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def serve_on(app: Any, port: int):
    """Serve ``app`` with uvicorn on exactly ``port`` (a server 'coming back' where clients point)."""
    import contextlib
    import socket
    import threading

    import uvicorn

    @contextlib.contextmanager
    def run():
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on connections of a socket that says so, and
        # without it each response waits ~40 ms on Nagle and the client's delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        wait_for(lambda: server.started or not thread.is_alive(), "uvicorn to start", 20)
        assert server.started, "uvicorn did not start"
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(20)
            sock.close()

    return run()
