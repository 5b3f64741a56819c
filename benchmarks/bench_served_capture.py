"""What storing a served answer before it ends costs, and what it buys: learnloop's OpenAI route with an
instant model (so only the route and its capture are measured), three arms in the same run.

- ``off``: capture off (serving.capture = false): the floor.
- ``queued``: the answer queued for the background writer after it is sent (the behaviour before
  issue 27): cheap, but feedback sent the instant the answer arrives may find nothing (404).
- ``confirmed``: the answer written in one transaction before its end is sent (what ships).

Per arm: request latency p50/p95 (half streamed), requests/s with 8 clients at once, and how many of
the feedback posts sent at once after each answer got 404 (every arm posts them, so the load is alike).

    .venv/bin/python benchmarks/bench_served_capture.py            # SQLite and PostgreSQL, ~2 min
    .venv/bin/python benchmarks/bench_served_capture.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

PG_ADMIN_URL = os.environ.get("LEARNLOOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ANSWER = "The order ships tomorrow; the tracking number follows by mail."


class InstantBackend:
    """A model that answers at once, so the figures are the route's and the capture's alone."""

    def load_adapter(self, name: str, path: Path) -> None: ...

    def unload_adapter(self, name: str) -> None: ...

    def list(self) -> list[str]:
        return ["base"]

    def chat(self, model: str, request: Any) -> list[Any]:
        from learnloop.serving.backend import ChatResult

        return [ChatResult(ANSWER, "stop", 8, 12)]

    def stream(self, model: str, request: Any) -> Any:
        yield ANSWER

    async def astream(self, model: str, request: Any) -> AsyncIterator[Any]:
        from learnloop.serving.backend import Chunk

        for word in ANSWER.split(" "):
            yield Chunk(text=word + " ")
        yield Chunk(finish_reason="stop", prompt_tokens=8, completion_tokens=12)

    async def achat(self, model: str, request: Any) -> list[Any]:
        return self.chat(model, request)


def _arm_capture(arm: str, settings: Any, db: Any) -> Any:
    from learnloop.serving.runtime import ServedCapture

    if arm == "off":
        return None
    if arm == "confirmed":
        return ServedCapture(settings, db)

    class QueuedCapture(ServedCapture):
        """The old path: handed to the background writer, not awaited."""

        def store(self, records: list[dict[str, Any]]) -> bool:
            for r in records:
                self.client.submit_trajectory(r, force=True)
            return True

    return QueuedCapture(settings, db)


def run_arm(arm: str, settings: Any, db: Any, requests: int, clients: int) -> dict[str, Any]:
    import httpx
    import openai

    from api_support import live_server
    from learnloop.api import create_app
    from learnloop.serving.runtime import ServingRuntime

    runtime = ServingRuntime(InstantBackend(), db, poll_seconds=0.5, capture=_arm_capture(arm, settings, db))
    runtime.start()
    latencies: list[float] = []
    not_found = 0
    lock = threading.Lock()
    try:
        with live_server(create_app(settings, db, watch_inbox=False, serving=runtime)) as url:

            def client(worker: int, n: int) -> None:
                nonlocal not_found
                oa = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
                http = httpx.Client(base_url=url)
                msgs = [{"role": "user", "content": f"where is my order {worker}?"}]
                for i in range(n):
                    t0 = time.perf_counter()
                    if i % 2:
                        tid = oa.chat.completions.create(model="learnloop", messages=msgs).id
                    else:
                        tid = None
                        for chunk in oa.chat.completions.create(
                            model="learnloop", messages=msgs, stream=True
                        ):
                            tid = chunk.id
                    took = time.perf_counter() - t0
                    # Every arm posts the feedback, so each puts the same load on the server (with
                    # capture off there is nothing to find: not counted).
                    r = http.post(f"/v1/trajectories/{tid}/feedback", json={"thumbs": 1})
                    missing = arm != "off" and r.status_code == 404
                    with lock:
                        latencies.append(took)
                        not_found += missing
                http.close()

            client(0, 10)  # warm-up, not measured
            latencies.clear()
            not_found = 0
            t0 = time.perf_counter()
            threads = [threading.Thread(target=client, args=(w, requests // clients)) for w in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
    finally:
        runtime.stop()
    latencies.sort()
    return {
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "rps": len(latencies) / wall,
        "feedback_404": not_found,
        "n": len(latencies),
    }


def open_db(kind: str, tmp: Path) -> tuple[Any, Any]:
    from sqlalchemy import create_engine, text

    from learnloop.store.db import Database

    if kind == "sqlite":
        db = Database(f"sqlite:///{tmp / f'bench-{uuid.uuid4().hex[:6]}.db'}")
        db.upgrade()
        return db, None
    schema = f"ll_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    sep = "&" if "?" in PG_ADMIN_URL else "?"
    db = Database(f"{PG_ADMIN_URL}{sep}options=-csearch_path%3D{schema}")
    db.upgrade()
    return db, drop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=400, help="requests per arm and round")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="rounds of all arms, interleaved")
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--quick", action="store_true", help="80 requests, one round, SQLite")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.rounds, args.db = 80, 1, "sqlite"

    import logging

    logging.getLogger("learnloop").setLevel(logging.ERROR)
    from learnloop.config import Settings

    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for kind in kinds:
            try:
                db, drop = open_db(kind, tmp)
            except Exception as exc:  # PostgreSQL down: say so, measure the rest
                print(f"{kind}: not reachable ({type(exc).__name__}); skipped")
                continue
            settings = Settings(data_dir=tmp / kind, database_url=db.url)
            results: dict[str, list[dict[str, Any]]] = {"off": [], "queued": [], "confirmed": []}
            try:
                for _ in range(args.rounds):
                    for arm in results:
                        results[arm].append(run_arm(arm, settings, db, args.requests, args.clients))
            finally:
                db.dispose()
                if drop is not None:
                    drop()
            med = {
                arm: {k: statistics.median(r[k] for r in rows) for k in ("p50_ms", "p95_ms", "rps")}
                for arm, rows in results.items()
            }
            print(
                f"\n{kind}: {args.requests} requests per arm and round (half streamed), "
                f"{args.clients} clients, {args.rounds} round(s); medians over rounds; "
                "ratios against other arms of the same run"
            )
            print(
                f"{'arm':10} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>8} {'p50 ×off':>9} {'p50 ×queued':>12} "
                f"{'req/s ×queued':>14} {'feedback 404':>13}"
            )
            for arm, rows in results.items():
                m, off, queued = med[arm], med["off"], med["queued"]
                missing = sum(r["feedback_404"] for r in rows)
                total = sum(r["n"] for r in rows)
                print(
                    f"{arm:10} {m['p50_ms']:8.1f} {m['p95_ms']:8.1f} {m['rps']:8.1f} "
                    f"{m['p50_ms'] / off['p50_ms']:9.2f} {m['p50_ms'] / queued['p50_ms']:12.2f} "
                    f"{m['rps'] / queued['rps']:14.2f} {missing:>6}/{total:<6}"
                )
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
