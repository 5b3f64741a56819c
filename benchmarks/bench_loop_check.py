"""One daemon check of a loop over a large history, on SQLite and PostgreSQL: the old way (the
dataset builder run dry over the whole selection and the whole held-out split at every check)
against the tally (daemon/tally.py: per-prompt counts, re-counting only what changed).

    .venv/bin/python benchmarks/bench_loop_check.py                       # 100k and 1M rows, both databases
    .venv/bin/python benchmarks/bench_loop_check.py --sizes 20000 --db sqlite   # quick

The history is inserted in bulk (executemany on SQLite, COPY on PostgreSQL): trajectories spread
over the last 30 days, four answers per prompt (a GRPO group), 20 scenarios, every tenth prompt
held out, one score each. The loop has never trained (its selection is the whole history, the old
check's worst case and the one the issue measured) and asks for 100 held-out examples; its
threshold is out of reach, so no cycle is queued and every check is a full check.

Per size and algorithm, each through ``loops.check_and_submit`` (what the daemon calls):
- old: the check with its counts taken by a dry build of everything (what every check did before);
- first: the tally's first check (a dry build of everything, plus storing each prompt's count);
- steady: the median and worst of ``--checks`` later checks, each after new traffic arrived through
  the store's ingest (100 scored trajectories, 10 late scores on old rows, 1 correction).
The reasons each check gives must be the same both ways (checked); old/steady is the speed-up.
Target: a steady check at 1,000,000 trajectories <= 0.5 s.
"""

from __future__ import annotations

# run.sh --quick: --sizes 20000 --checks 3
import argparse
import contextlib
import datetime as dt
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, insert, text  # noqa: E402

from learnloop.config import Settings  # noqa: E402
from learnloop.daemon import loops, tally  # noqa: E402
from learnloop.daemon.log import configure_log  # noqa: E402
from learnloop.datasets.builders import BUILDERS, BuildReport  # noqa: E402
from learnloop.datasets.filters import parse_filters  # noqa: E402
from learnloop.models.tiny import build_tiny_model  # noqa: E402
from learnloop.store import ingest, parse_batch  # noqa: E402
from learnloop.store.db import Database  # noqa: E402
from learnloop.store.models import Score, Trajectory  # noqa: E402
from learnloop.store.trajectories import prompt_hash  # noqa: E402

PG_ADMIN_URL = os.environ.get("LEARNLOOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
WORDS = "queue worker cache token model answer latency retry shard index prompt reward policy".split()
COLUMNS = [
    "id",
    "idempotency_key",
    "project",
    "scenario",
    "group_id",
    "source",
    "messages",
    "metadata",
    "tags",
    "prompt_hash",
    "split",
    "created_at",
    "ingested_at",
]


def _history(start: int, count: int, now: dt.datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(start)
    trajs, scores = [], []
    for i in range(start, start + count):
        group = i // 4
        messages = [
            {
                "role": "user",
                "content": f"question {group}: " + " ".join(WORDS[(group + k) % 13] for k in range(8)),
            },
            {"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40)))},
        ]
        when = now - dt.timedelta(days=1) - dt.timedelta(seconds=(i * 2591) % (29 * 86400))
        tid = f"t{i:08d}"
        trajs.append(
            {
                "id": tid,
                "idempotency_key": tid,
                "project": "bench",
                "scenario": f"s{group % 20}",
                "group_id": f"g{group}",
                "source": "production",
                "messages": messages,
                "metadata": {},
                "tags": [],
                "prompt_hash": prompt_hash(messages),
                "split": "holdout" if group % 10 == 0 else "train",
                "created_at": when,
                "ingested_at": when,
            }
        )
        scores.append(
            {
                "trajectory_id": tid,
                "name": "quality",
                "value": round(rng.random(), 3),
                "source": "env",
                "created_at": when,
            }
        )
    return trajs, scores


def fill(db: Database, start: int, count: int) -> None:
    """Insert ``count`` trajectories and their scores in bulk."""
    now = dt.datetime.now(dt.UTC)
    for offset in range(0, count, 20_000):
        trajs, scores = _history(start + offset, min(20_000, count - offset), now)
        if db.dialect == "sqlite":
            with db.session() as s:
                s.execute(insert(Trajectory), trajs)
                s.execute(insert(Score), scores)
            continue
        raw = db.engine.raw_connection()
        try:
            cur = raw.cursor()
            with cur.copy(f"COPY trajectories ({', '.join(COLUMNS)}) FROM STDIN") as c:
                for t in trajs:
                    c.write_row(
                        [json.dumps(t[k]) if k in ("messages", "metadata", "tags") else t[k] for k in COLUMNS]
                    )
            with cur.copy("COPY scores (trajectory_id, name, value, source, created_at) FROM STDIN") as c:
                for sc in scores:
                    c.write_row(
                        [sc["trajectory_id"], sc["name"], sc["value"], sc["source"], sc["created_at"]]
                    )
            raw.commit()
        finally:
            raw.close()
    if db.dialect == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE trajectories"))
            conn.execute(text("VACUUM ANALYZE scores"))


def traffic(db: Database, round_no: int, size: int) -> None:
    """What arrives between two checks: new scored trajectories, late scores, a correction."""
    rng = random.Random(round_no)
    new = []
    for k in range(100):
        q = f"fresh {round_no}-{k}: " + " ".join(rng.choice(WORDS) for _ in range(6))
        new.append(
            {
                "id": f"new-{round_no}-{k}",
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "an answer"}],
                "source": "production",
                "scenario": f"s{k % 20}",
                "scores": {"quality": round(rng.random(), 3)},
            }
        )
    old = [f"t{rng.randrange(size):08d}" for _ in range(11)]
    with db.session() as s:
        ingest(
            s,
            parse_batch(
                {
                    "trajectories": new,
                    "scores": [{"trajectory_id": t, "name": "quality", "value": 0.9} for t in old[:10]],
                    "feedback": [{"trajectory_id": old[10], "correction": "the right answer"}],
                }
            ),
            holdout_fraction=0.1,
        )


@contextlib.contextmanager
def counted_dry() -> Iterator[None]:
    """The old check's counting: the builder run over the whole selection and held-out split."""

    def examples(db: Database, settings: Settings, loop: Any, since: Any, until: Any) -> tally.Counts:
        f = parse_filters(tally.dataset_filters(loop, since, until)).resolved(
            loop.algorithm, settings.datasets
        )
        return _dry(db, settings, loop.algorithm, f)

    def holdout(db: Database, settings: Settings, loop: Any) -> int:
        f = parse_filters({"scenario": loop.scenario, "sources": list(loop.sources), "tags": list(loop.tags)})
        return _dry(db, settings, "holdout", f.resolved("holdout", settings.datasets)).examples

    saved = tally.count_examples, tally.count_holdout
    tally.count_examples, tally.count_holdout = examples, holdout  # type: ignore[assignment]
    try:
        yield
    finally:
        tally.count_examples, tally.count_holdout = saved


def _dry(db: Database, settings: Settings, kind: str, f: Any) -> tally.Counts:
    counts = tally.Counts(0, 0, [])
    with db.read_session() as s:
        for item in BUILDERS[kind](s, f, settings.scoring, BuildReport(), settings.datasets.chunk_size):
            counts.examples += 1
            if kind == "grpo" and len(set(item.record["rewards"])) > 1:
                counts.varied += 1
            if item.reward is not None:
                counts.rewards.append(item.reward)  # type: ignore[union-attr]
    return counts


def timed_check(db: Database, s: Settings) -> tuple[float, float, list[str]]:
    t0, c0 = time.perf_counter(), time.process_time()
    decision, job = loops.check_and_submit(db, s, s.loops[0])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert decision is not None and job is None, "the benchmark's loop must never queue a cycle"
    # Free disk space moves on a shared machine; every other reason must be the same both ways.
    return wall, cpu, [r for r in decision.reasons if "MiB free" not in r]


def run(
    name: str, url: str, sizes: list[int], algorithms: list[str], checks: int, old_max: int, tiny: Path
) -> list:
    db = Database(url)
    db.upgrade()
    results = []
    with tempfile.TemporaryDirectory() as data:
        have = 0
        for size in sizes:
            t0 = time.perf_counter()
            fill(db, have, size - have)
            have = size
            print(f"{name:10s} {size:>9,d} rows inserted in {time.perf_counter() - t0:.0f} s", flush=True)
            for algorithm in algorithms:
                loop = {
                    "name": f"{algorithm}-{size}",
                    "algorithm": algorithm,
                    "sources": ["production"],
                    "base_model": str(tiny),
                    "dataset": {"min_reward": 0.3} if algorithm == "sft" else {},
                    "triggers": {"min_new_examples": 10**9, "min_holdout": 100, "min_free_disk_mb": 0},
                }
                s = Settings(data_dir=Path(data), database_url=url, loops=[loop])
                old = None
                if size <= old_max:
                    with counted_dry():
                        wall, cpu, old_reasons = timed_check(db, s)
                    old = (wall, cpu)
                first_wall, first_cpu, first_reasons = timed_check(db, s)
                if old is not None:
                    assert first_reasons == old_reasons, (first_reasons, old_reasons)
                steady = []
                for r in range(checks):
                    traffic(db, r + 1000 * size, size)
                    wall, cpu, reasons = timed_check(db, s)
                    steady.append((wall, cpu))
                    if r == checks - 1 and size <= old_max:  # the counts still agree after the traffic
                        with counted_dry():
                            assert timed_check(db, s)[2] == reasons
                row = {
                    "db": name,
                    "rows": size,
                    "algorithm": algorithm,
                    "old": old,
                    "first": (first_wall, first_cpu),
                    "steady_median": statistics.median(w for w, _ in steady),
                    "steady_max": max(w for w, _ in steady),
                    "steady_cpu_median": statistics.median(c for _, c in steady),
                    "examples": int(reasons[0].split("/")[0]),
                }
                results.append(row)
                old_text = f"{old[0]:7.2f} s" if old else "      -  "
                ratio = f"{old[0] / row['steady_median']:7.0f}x" if old else "      -"
                print(
                    f"{name:10s} {size:>9,d} {algorithm:5s} examples {row['examples']:>8,d}  old {old_text}  "
                    f"first {first_wall:7.2f} s  steady median {row['steady_median']:.3f} s "
                    f"(max {row['steady_max']:.3f}, CPU {row['steady_cpu_median']:.3f})  old/steady {ratio}",
                    flush=True,
                )
    db.dispose()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--algorithms", nargs="+", default=["sft", "grpo"], choices=["sft", "dpo", "grpo"])
    ap.add_argument("--db", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    ap.add_argument("--checks", type=int, default=5, help="steady checks per size and algorithm")
    ap.add_argument("--old-max", type=int, default=10**9, help="measure the old check only up to this size")
    args = ap.parse_args()
    configure_log(None)
    sizes = sorted(args.sizes)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_model(Path(tmp) / "tiny")
        for name in args.db:
            if name == "sqlite":
                results += run(
                    name, f"sqlite:///{tmp}/bench.db", sizes, args.algorithms, args.checks, args.old_max, tiny
                )
                continue
            schema = f"ll_bench_{uuid.uuid4().hex[:10]}"
            admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            try:
                url = f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
                results += run(name, url, sizes, args.algorithms, args.checks, args.old_max, tiny)
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()
    print(
        "\n| db | trajectories | loop | examples | old check | first check "
        "| steady check, median (max) | old / steady |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        old = f"{r['old'][0]:.2f} s" if r["old"] else "-"
        ratio = f"{r['old'][0] / r['steady_median']:.0f}x" if r["old"] else "-"
        print(
            f"| {r['db']} | {r['rows']:,} | {r['algorithm']} | {r['examples']:,} | {old} "
            f"| {r['first'][0]:.2f} s | "
            f"{r['steady_median']:.3f} s ({r['steady_max']:.3f} s) | {ratio} |"
        )
    top = max(sizes)
    for r in results:
        if r["rows"] == top:
            verdict = "MET" if r["steady_median"] <= 0.5 else "MISSED"
            print(
                f"target: steady check <= 0.5 s at {top:,} ({r['db']}, {r['algorithm']}): "
                f"{r['steady_median']:.3f} s {verdict}"
            )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
