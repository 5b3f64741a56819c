"""HTTP batch ingest throughput against a real `learnloop serve`, with direct `store.ingest` as the baseline.

    .venv/bin/python benchmarks/bench_ingest_http.py [--batches 40] [--batch-size 100] [--concurrency 4]

For SQLite (a fresh file) and PostgreSQL (a fresh schema, when the server at
LEARNLOOP_TEST_PG_URL / 127.0.0.1:5432 answers), it measures trajectories per second for:

* direct: ``parse_batch`` + ``ingest`` in one transaction per batch, in this process (no HTTP);
* http x1: the same batches POSTed one after another to a `learnloop serve` subprocess;
* http xN: the same, from N client threads at once.

and prints each rate with its ratio to the direct baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import create_engine, func, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learnloop.store import Database, ingest, parse_batch  # noqa: E402
from learnloop.store.models import Trajectory  # noqa: E402

PG_ADMIN_URL = os.environ.get("LEARNLOOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def make_batches(n_batches: int, batch_size: int, tag: str) -> list[dict]:
    batches = []
    for b in range(n_batches):
        items = []
        for i in range(batch_size):
            k = b * batch_size + i
            items.append(
                {
                    "id": f"{tag}-{k}",
                    "scenario": f"scenario-{k % 20}",
                    "messages": [
                        {"role": "system", "content": "You are a helpful assistant."},
                        {
                            "role": "user",
                            "content": f"Question number {k}: what is {k} + {k}? " + "context " * 40,
                        },
                        {"role": "assistant", "content": f"The answer is {2 * k}. " + "explanation " * 30},
                    ],
                    "metadata": {"session": k // 7, "ui": "web"},
                    "tags": ["bench"],
                    "scores": {"length": 0.5} if k % 2 else None,
                    "feedback": {"thumbs": 1} if k % 5 == 0 else None,
                }
            )
        batches.append({"trajectories": items})
    return batches


def direct(url: str, batches: list[dict]) -> float:
    db = Database(url)
    db.upgrade()
    start = time.perf_counter()
    for b in batches:
        with db.session() as s:
            ingest(s, parse_batch(b))
    elapsed = time.perf_counter() - start
    _check(db, sum(len(b["trajectories"]) for b in batches))
    db.dispose()
    return elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_run(url: str, batches: list[dict], concurrency: int, data_dir: Path) -> float:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNLOOP_")}
    env.update(PYTHONPATH=str(ROOT), LEARNLOOP_DATA_DIR=str(data_dir), LEARNLOOP_DATABASE_URL=url)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "learnloop",
            "serve",
            "--port",
            str(port),
            "--no-watch-inbox",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.1)

        def send(chunk: list[dict]) -> None:
            with httpx.Client(base_url=base, timeout=120) as client:
                for b in chunk:
                    while True:
                        r = client.post("/v1/ingest", json=b)
                        if r.status_code in (429, 503):  # what the SDK does: wait and resend the same batch
                            time.sleep(float(r.headers.get("Retry-After", "1")))
                            continue
                        r.raise_for_status()
                        break

        shares = [batches[i::concurrency] for i in range(concurrency)]
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(send, shares))
        elapsed = time.perf_counter() - start
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    db = Database(url)
    _check(db, sum(len(b["trajectories"]) for b in batches))
    db.dispose()
    return elapsed


def _check(db: Database, expected: int) -> None:
    with db.read_session() as s:
        n = s.scalar(select(func.count()).select_from(Trajectory))
    if n != expected:
        raise SystemExit(f"expected {expected} rows stored, found {n}")


def pg_schema_url() -> tuple[str, str] | None:
    try:
        eng = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        schema = f"ll_bench_{uuid.uuid4().hex[:10]}"
        with eng.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        eng.dispose()
    except Exception as exc:
        print(f"PostgreSQL not available ({type(exc).__name__}); skipping it")
        return None
    sep = "&" if "?" in PG_ADMIN_URL else "?"
    return schema, f"{PG_ADMIN_URL}{sep}options=-csearch_path%3D{schema}"


def drop_schema(schema: str) -> None:
    eng = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    eng.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--no-postgres", action="store_true")
    args = ap.parse_args()
    rows = args.batches * args.batch_size
    print(f"{args.batches} batches x {args.batch_size} trajectories = {rows} rows per measurement\n")
    print(f"{'database':<11} {'mode':<10} {'seconds':>8} {'rows/s':>9} {'vs direct':>10}")

    with tempfile.TemporaryDirectory(prefix="ll-bench-") as tmp:
        tmp_path = Path(tmp)
        targets: list[tuple[str, object]] = [("sqlite", None)]
        if not args.no_postgres:
            pg = pg_schema_url()
            if pg:
                targets.append(("postgresql", pg))
        for name, pg in targets:
            runs = ("direct", "http x1", f"http x{args.concurrency}")
            baseline = None
            for i, mode in enumerate(runs):
                tag = f"{name}-{i}"
                if name == "sqlite":
                    url = f"sqlite:///{tmp_path / f'{tag}.db'}"
                else:
                    # One schema per database; each mode starts from empty tables.
                    url = pg[1]  # type: ignore[index]
                    db = Database(url)
                    db.upgrade()
                    with db.engine.begin() as conn:
                        conn.execute(text("TRUNCATE trajectories RESTART IDENTITY CASCADE"))
                    db.dispose()
                batches = make_batches(args.batches, args.batch_size, tag)
                if mode == "direct":
                    elapsed = direct(url, batches)
                    baseline = elapsed
                else:
                    conc = 1 if mode == "http x1" else args.concurrency
                    elapsed = http_run(url, batches, conc, tmp_path / f"data-{tag}")
                ratio = baseline / elapsed if baseline else 1.0
                print(f"{name:<11} {mode:<10} {elapsed:8.2f} {rows / elapsed:9.0f} {ratio:9.2f}x")
            if pg:
                drop_schema(pg[0])  # type: ignore[index]


if __name__ == "__main__":
    main()
