"""The job queue's claim rate with 1 and 4 workers on SQLite and PostgreSQL, and the idle daemon's CPU.

    .venv/bin/python benchmarks/bench_queue.py                  # both databases (PostgreSQL if reachable)
    .venv/bin/python benchmarks/bench_queue.py --jobs 2000 --idle-seconds 60 --json out.json

Claim rate: ``--jobs`` queued jobs, then W worker processes (each its own engine) loop
claim -> succeed until the queue is empty; jobs/s = jobs / wall time. Every job must be handed out
exactly once (checked). Idle CPU: a `learnloop daemon` process with no loops and no jobs, its
CPU seconds (utime + stime from /proc) over ``--idle-seconds`` after a warm-up, as a share of one core.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

PG_ADMIN = os.environ.get("LEARNLOOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _worker(url: str, owner: str, out: Any, ready: Any, go: Any) -> None:
    from learnloop.daemon import queue
    from learnloop.daemon.log import configure_log
    from learnloop.store.db import Database

    configure_log(None)
    db = Database(url)
    with db.read_session() as s:  # connect and warm up before the clock starts
        s.execute(text("select 1"))
    ready.release()
    go.wait()
    got = []
    while (job := queue.claim(db, owner, lease_seconds=60)) is not None:
        queue.succeed(db, job.id, owner)
        got.append(job.id)
    out.put(got)
    db.dispose()


def claim_rate(url: str, jobs: int, workers: int) -> dict[str, Any]:
    from learnloop.daemon import queue
    from learnloop.daemon.log import configure_log
    from learnloop.store.db import Database
    from learnloop.store.models import Base

    configure_log(None)
    db = Database(url)
    db.upgrade()
    with db.engine.begin() as conn:
        for t in reversed(Base.metadata.sorted_tables):
            conn.execute(t.delete())
    for i in range(jobs):
        queue.submit(db, "score", {"i": i}, priority=["high", "normal", "low"][i % 3])
    ctx = mp.get_context("spawn")
    out, ready, go = ctx.Queue(), ctx.Semaphore(0), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(url, f"bench-{w}", out, ready, go)) for w in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()  # process start-up (imports) is not timed
    t0 = time.perf_counter()
    go.set()
    ids = [i for _ in procs for i in out.get()]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    assert len(ids) == jobs and len(set(ids)) == jobs, "a job was handed out twice or lost"
    db.dispose()
    return {"workers": workers, "jobs": jobs, "seconds": round(wall, 2), "jobs_per_s": round(jobs / wall, 1)}


def idle_cpu(url: str, seconds: float, data: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNLOOP_")}
    env.update(
        LEARNLOOP_DATA_DIR=str(data), LEARNLOOP_DATABASE_URL=url, LEARNLOOP_CONFIG=str(data / "none.toml")
    )
    data.mkdir(parents=True, exist_ok=True)
    (data / "none.toml").write_text("")
    proc = subprocess.Popen(
        [sys.executable, "-m", "learnloop", "daemon"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(8)  # start-up: imports, migrations, the first scoring pass

        def cpu() -> float:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().split(")")[-1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        c0, t0 = cpu(), time.perf_counter()
        time.sleep(seconds)
        used, wall = cpu() - c0, time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(30)
    return {
        "seconds": round(wall, 1),
        "cpu_seconds": round(used, 3),
        "cpu_percent": round(100 * used / wall, 2),
    }


def _pg_schema() -> tuple[str, Any] | None:
    try:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        schema = f"ll_bench_{uuid.uuid4().hex[:10]}"
        with admin.connect() as c:
            c.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception:  # noqa: BLE001
        return None
    sep = "&" if "?" in PG_ADMIN else "?"
    return f"{PG_ADMIN}{sep}options=-csearch_path%3D{schema}", (admin, schema)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        dbs = {"sqlite": f"sqlite:///{tmp}/bench.db"}
        pg = _pg_schema()
        if pg:
            dbs["postgresql"] = pg[0]
        try:
            for name, url in dbs.items():
                rows = [claim_rate(url, args.jobs, w) for w in (1, 4)]
                idle = idle_cpu(url, args.idle_seconds, Path(tmp) / f"data-{name}")
                results[name] = {"claim": rows, "idle": idle}
                for r in rows:
                    print(
                        f"{name:10} {r['workers']} worker(s): {r['jobs']} jobs in {r['seconds']} s = "
                        f"{r['jobs_per_s']} jobs/s (claim + complete, 2 transactions each)"
                    )
                print(
                    f"{name:10} idle daemon: {idle['cpu_seconds']} CPU s in {idle['seconds']} s = "
                    f"{idle['cpu_percent']}% of a core"
                )
        finally:
            if pg:
                admin, schema = pg[1]
                with admin.connect() as c:
                    c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
