"""Dashboard page load times on a large history: 1,000 training runs and 1,000,000 metric points.

Fills a fresh database (SQLite by default; --database-url for PostgreSQL) with 1,000 finished and
running jobs whose training_metrics add up to a million rows (one run alone holds 200,000 steps,
so its curve must be downsampled), 20,000 scored trajectories, 200 versions with evaluations and
alias moves; then serves the app with uvicorn and GETs every page over real HTTP, reporting p50
and p95 of the wall time per page.

    python benchmarks/bench_dashboard.py                 # SQLite in a temporary folder
    python benchmarks/bench_dashboard.py \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test --schema bench_dash
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from api_support import live_server  # noqa: E402
from learnloop.api.app import create_app  # noqa: E402
from learnloop.config import Settings  # noqa: E402
from learnloop.store.db import Database  # noqa: E402
from learnloop.store.models import (  # noqa: E402
    Alias,
    AliasEvent,
    Evaluation,
    Event,
    Job,
    ModelVersion,
    Score,
    TrainingMetric,
    Trajectory,
    utcnow,
)

RUNS = 1000
POINTS = 1_000_000
BIG_RUN = 200_000


def fill(db: Database, trajectories: int) -> dict[str, int]:
    rnd = random.Random(7)
    now = utcnow()
    t0 = time.perf_counter()
    jobs = []
    for i in range(RUNS):
        start = now - dt.timedelta(hours=RUNS - i)
        state = "running" if i == RUNS - 1 else ("failed" if i % 17 == 0 else "succeeded")
        jobs.append(
            {
                "id": i + 1,
                "kind": "train",
                "priority": 100,
                "state": state,
                "desired_state": "run",
                "payload": {},
                "attempts": 1,
                "max_attempts": 3,
                "progress": {"step": 800, "total_steps": 1000, "loss": 1.0},
                "result": {},
                "run_after": start,
                "created_at": start,
                "started_at": start,
                "finished_at": None if state == "running" else start + dt.timedelta(minutes=40),
                "error": "OOM" if state == "failed" else None,
                "loop": "main",
            }
        )
    with db.connection() as conn:
        conn.execute(Job.__table__.insert(), jobs)
    # The running job (the last) is the big one; the others share the rest evenly.
    per_run = (POINTS - BIG_RUN) // (RUNS - 1)
    batch: list[dict] = []
    written = 0

    def flush() -> None:
        nonlocal batch, written
        with db.connection() as conn:
            conn.execute(TrainingMetric.__table__.insert(), batch)
        written += len(batch)
        batch = []

    for job_id in range(1, RUNS + 1):
        n = BIG_RUN if job_id == RUNS else per_run
        n += (POINTS - BIG_RUN - per_run * (RUNS - 1)) if job_id == 1 else 0
        for step in range(1, n + 1):
            batch.append(
                {
                    "job_id": job_id,
                    "step": step,
                    "loss": 2.0 / (1 + step / 500) + rnd.random() * 0.05,
                    "learning_rate": 2e-4,
                    "grad_norm": 1.0,
                    "tokens_per_s": 300.0,
                    "extra": {},
                    "created_at": now,
                }
            )
            if len(batch) >= 50_000:
                flush()
    if batch:
        flush()
    traj, scores = [], []
    for i in range(trajectories):
        tid = f"{i:032x}"
        served = i % 4 == 0
        traj.append(
            {
                "id": tid,
                "idempotency_key": tid,
                "project": "default",
                "scenario": ["math", "support", "code"][i % 3],
                "source": "served" if served else "production",
                "model_version": f"v{(i % 5) + 195:04d}" if served else None,
                "messages": [
                    {"role": "user", "content": f"question {i}"},
                    {"role": "assistant", "content": f"answer {i}"},
                ],
                "meta": {"latency_ms": 50 + i % 200},
                "tags": ["web"],
                "prompt_hash": f"{i:064x}",
                "split": "train",
                "created_at": now - dt.timedelta(minutes=i),
                "ingested_at": now,
            }
        )
        scores.append(
            {
                "trajectory_id": tid,
                "name": "correct",
                "value": rnd.uniform(-1, 1),
                "source": "heuristic",
                "created_at": now - dt.timedelta(minutes=i),
            }
        )
    with db.connection() as conn:
        conn.execute(Trajectory.__table__.insert(), traj)
        conn.execute(Score.__table__.insert(), scores)
    with db.connection() as conn:
        conn.execute(
            ModelVersion.__table__.insert(),
            [
                {
                    "id": f"v{i:04d}",
                    "base_model": "smollm2",
                    "loop": "main",
                    "algorithm": "sft",
                    "config": {},
                    "files": {},
                    "gate": {"verdict": "promote"},
                    "ever_served": True,
                    "parent_id": f"v{i - 1:04d}" if i > 1 else None,
                    "job_id": i * 5,
                    "metrics": {},
                    "state": "archived",
                    "created_at": now - dt.timedelta(hours=200 - i),
                }
                for i in range(1, 201)
            ],
        )
        conn.execute(
            Evaluation.__table__.insert(),
            [
                {
                    "candidate_id": f"v{i:04d}",
                    "baseline_id": f"v{i - 1:04d}",
                    "verdict": "promote" if i % 3 else "reject",
                    "metrics": {"reward": 0.5 + i / 1000, "win_rate": 0.5},
                    "report": {},
                    "gate": {"reasons": ["ok"]},
                    "created_at": now - dt.timedelta(hours=200 - i),
                }
                for i in range(1, 201)
            ],
        )
        conn.execute(
            AliasEvent.__table__.insert(),
            [
                {
                    "alias": "learnloop",
                    "action": "promote",
                    "from_version": f"v{i - 1:04d}",
                    "to_version": f"v{i:04d}",
                    "actor": "daemon",
                    "created_at": now - dt.timedelta(hours=200 - i),
                }
                for i in range(1, 201)
            ],
        )
        conn.execute(
            Alias.__table__.insert(),
            [{"name": "learnloop", "version_id": "v0200", "split": 0.0, "shadow": 0.0, "updated_at": now}],
        )
        conn.execute(
            Event.__table__.insert(),
            [
                {
                    "kind": "job.succeeded",
                    "level": "info",
                    "job_id": i,
                    "message": f"job {i} succeeded",
                    "data": {},
                    "created_at": now - dt.timedelta(hours=RUNS - i),
                }
                for i in range(1, RUNS + 1)
            ],
        )
    return {
        "metric_points": written,
        "jobs": RUNS,
        "trajectories": trajectories,
        "fill_seconds": round(time.perf_counter() - t0, 1),
    }


def measure(url: str, pages: list[str], repeat: int) -> list[dict]:
    out = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for page in pages:
            c.get(page).raise_for_status()  # warm (templates compiled, plans cached)
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                r = c.get(page)
                times.append(time.perf_counter() - t)
                r.raise_for_status()
            times.sort()
            out.append(
                {
                    "page": page,
                    "p50_ms": round(statistics.median(times) * 1000, 1),
                    "p95_ms": round(times[max(0, int(round(0.95 * len(times))) - 1)] * 1000, 1),
                    "max_ms": round(times[-1] * 1000, 1),
                    "bytes": len(r.content),
                }
            )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", default=None, help="Default: a SQLite file in a temporary folder.")
    ap.add_argument("--schema", default=None, help="PostgreSQL: a schema created (and dropped) for the run.")
    ap.add_argument("--trajectories", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=20, help="Requests per page.")
    ap.add_argument("--out", default="bench-out/dashboard.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    url = args.database_url or f"sqlite:///{tmp / 'learnloop.db'}"
    admin = None
    if args.schema:
        from sqlalchemy import create_engine, text

        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(
                text(f'DROP SCHEMA IF EXISTS "{args.schema}" CASCADE; CREATE SCHEMA "{args.schema}"')
            )
        url += ("&" if "?" in url else "?") + f"options=-csearch_path%3D{args.schema}"
    db = Database(url)
    db.upgrade()
    try:
        filled = fill(db, args.trajectories)
        print(f"filled: {filled}", flush=True)
        settings = Settings(data_dir=tmp / "data", database_url=url)
        pages = [
            "/",
            "/jobs",
            f"/jobs/{RUNS}",
            "/jobs/1",
            "/versions",
            "/serving",
            "/quality",
            "/rewards",
            "/datasets",
            "/trajectories",
            "/trajectories?scenario=math&reward_min=0.5",
            "/v1/status",
            "/metrics",
            "/ui/live/overview",
        ]
        with live_server(create_app(settings, db, watch_inbox=False)) as base:
            results = measure(base, pages, args.repeat)
        print(f"{'page':48} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'KB':>7}")
        for r in results:
            print(
                f"{r['page']:48} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} {r['max_ms']:8.1f} "
                f"{r['bytes'] / 1024:7.1f}"
            )
        worst = max(r["p95_ms"] for r in results)
        print(f"worst p95: {worst:.1f} ms ({'within' if worst <= 1000 else 'OVER'} the 1 s budget)")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps({"database": db.dialect, "filled": filled, "pages": results}, indent=2)
        )
        return 0 if worst <= 1000 else 1
    finally:
        db.dispose()
        if admin is not None:
            from sqlalchemy import text

            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{args.schema}" CASCADE'))


if __name__ == "__main__":
    sys.exit(main())
