"""Dataset build throughput at 25k / 50k / 100k trajectories on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/bench_datasets.py [--sizes 25000 50000 100000] [--db sqlite postgresql]

Target: SFT on SQLite at 100k trajectories >= 20,000 trajectories/s (trajectories scanned per
second of the build: the table holds them all, ~62% pass the reward bar and dedup).

Rows are inserted in bulk (prompts shared by 4 trajectories, one score each, ~1% exact duplicates),
then each dataset kind is built and timed. Printed: trajectories/s per size and kind, and the ratio
of each rate to the rate at the smallest size (about 1.0 means time grows linearly with rows).
RSS growth during each build is shown, and with --memory the Python heap peak of a traced rebuild,
to check that rows stream in chunks instead of being loaded at once (what remains grows with the
output: item ids, lengths and the duplicate detector's signatures).
PostgreSQL runs in its own schema of database `test`, dropped afterwards.
"""

from __future__ import annotations

# run.sh --quick: --sizes 10000 20000 --db sqlite
import argparse
import datetime as dt
import json
import os
import random
import resource
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, insert, text  # noqa: E402

from learnloop.config import Settings  # noqa: E402
from learnloop.datasets import build_dataset  # noqa: E402
from learnloop.store.db import Database  # noqa: E402
from learnloop.store.models import Score, ScoreSource, Split, Trajectory  # noqa: E402
from learnloop.store.trajectories import prompt_hash  # noqa: E402

PG_ADMIN_URL = os.environ.get("LEARNLOOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
WORDS = (
    "queue worker restart cache token model answer request latency retry shard index replica "
    "vector prompt reward policy adapter window budget trace span error timeout batch stream"
).split()


def _rows(start: int, count: int, rng: random.Random) -> tuple[list[dict], list[dict]]:
    now = dt.datetime.now(dt.UTC)
    trajs, scores = [], []
    for i in range(start, start + count):
        group = i // 4  # 4 answers per prompt: DPO pairs and GRPO groups
        prompt_rng = random.Random(group)
        prompt = f"question {group}: " + " ".join(prompt_rng.choice(WORDS) for _ in range(12))
        if i % 100 == 99:  # an exact duplicate of the previous answer
            answer = trajs[-1]["messages"][1]["content"] if trajs else "dup"
        else:
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80)))
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        tid = f"t{i:07d}"
        trajs.append(
            {
                "id": tid,
                "idempotency_key": tid,
                "project": "bench",
                "scenario": f"s{group % 20}",
                "group_id": f"g{group}",
                "window_id": None,
                "agent": None,
                "source": "production",
                "model": None,
                "model_version": None,
                "messages": messages,
                "tools": None,
                "meta": {},
                "tags": ["bench"],
                "prompt_hash": prompt_hash(messages),
                "split": Split.holdout if group % 10 == 0 else Split.train,
                "created_at": now - dt.timedelta(seconds=i),
                "ingested_at": now,
            }
        )
        scores.append(
            {
                "trajectory_id": tid,
                "name": "quality",
                "value": rng.random(),
                "source": ScoreSource.env,
                "created_at": now,
            }
        )
    return trajs, scores


def _fill(db: Database, start: int, count: int) -> int:
    """Insert ``count`` trajectories (+ scores); returns the bytes of their messages as JSON."""
    rng = random.Random(start)
    message_bytes = 0
    for offset in range(0, count, 5000):
        trajs, scores = _rows(start + offset, min(5000, count - offset), rng)
        message_bytes += sum(len(json.dumps(t["messages"])) for t in trajs)
        with db.session() as s:
            s.execute(insert(Trajectory), trajs)
            s.execute(insert(Score), scores)
    return message_bytes


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


class _PeakRss:
    """Samples resident memory every 20 ms while a build runs: how much it grows above the start."""

    def __enter__(self) -> _PeakRss:
        self.start = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.growth = self.peak - self.start


def run(
    name: str, url: str, sizes: list[int], kinds: list[str], tokenizer: str | None, memory: bool
) -> dict[tuple[int, str], tuple[float, float]]:
    db = Database(url)
    db.upgrade()
    rates: dict[tuple[int, str], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(data_dir=Path(data), database_url=url)
        have = message_bytes = 0
        for size in sizes:
            message_bytes += _fill(db, have, size - have)
            have = size
            print(
                f"{name:10s} {size:>7d} rows hold {message_bytes / 2**20:.0f} MB of messages (JSON)",
                flush=True,
            )
            for kind in kinds:
                if size == sizes[0]:  # warm-up (imports, caches, query plans), untimed
                    build_dataset(
                        db,
                        kind,
                        {"min_reward": 0.3} if kind == "sft" else {},
                        settings=settings,
                        tokenizer=tokenizer,
                    )
                with _PeakRss() as mem:
                    t0, c0 = time.perf_counter(), time.process_time()
                    info = build_dataset(
                        db,
                        kind,
                        {"min_reward": 0.3} if kind == "sft" else {},
                        settings=settings,
                        tokenizer=tokenizer,
                    )
                    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
                rates[(size, kind)] = (size / seconds, size / cpu)
                traced = ""
                if memory:
                    # A second, identical build under tracemalloc (slower, so untimed): Python heap peak.
                    tracemalloc.start()
                    build_dataset(
                        db,
                        kind,
                        {"min_reward": 0.3} if kind == "sft" else {},
                        settings=settings,
                        tokenizer=tokenizer,
                    )
                    traced = f"  heap peak {tracemalloc.get_traced_memory()[1] / 2**20:5.0f} MB"
                    tracemalloc.stop()
                print(
                    f"{name:10s} {size:>7d} rows  {kind:5s} {info.count:>7d} examples  {seconds:6.2f} s  "
                    f"{size / seconds:7.0f} traj/s wall {size / cpu:7.0f} traj/s CPU  RSS "
                    f"+{mem.growth:4.0f} MB{traced}",
                    flush=True,
                )

    db.dispose()
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[25_000, 50_000, 100_000])
    ap.add_argument("--kinds", nargs="+", default=["sft", "dpo", "grpo"])
    ap.add_argument("--db", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    ap.add_argument(
        "--memory", action="store_true", help="also rebuild each dataset under tracemalloc: heap peak"
    )
    ap.add_argument(
        "--tokenizer", help="HF model folder to count tokens with (default: the approximate count)"
    )
    args = ap.parse_args()
    sizes = sorted(args.sizes)
    results = {}
    for name in args.db:
        if name == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                results[name] = run(
                    name, f"sqlite:///{tmp}/bench.db", sizes, args.kinds, args.tokenizer, args.memory
                )
        else:
            schema = f"ll_bench_{uuid.uuid4().hex[:10]}"
            admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            try:
                results[name] = run(
                    name,
                    f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}",
                    sizes,
                    args.kinds,
                    args.tokenizer,
                    args.memory,
                )
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()
    print("\nrate at each size / rate at the smallest size (1.0 = time grows linearly with rows);")
    print(
        "wall clock, and CPU time of this process (steadier on a shared machine; "
        "excludes the PostgreSQL server):"
    )
    for name, rates in results.items():
        for kind in args.kinds:
            for label, i in (("wall", 0), ("CPU", 1)):
                base = rates[(sizes[0], kind)][i]
                ratios = "  ".join(
                    f"{s // 1000}k: {rates[(s, kind)][i]:7.0f}/s x{rates[(s, kind)][i] / base:4.2f}"
                    for s in sizes
                )
                print(f"{name:10s} {kind:5s} {label:4s} {ratios}")
    if "sqlite" in results and "sft" in args.kinds:
        wall, cpu = results["sqlite"][(sizes[-1], "sft")]
        verdict = "MET" if wall >= 20_000 else "MISSED"
        print(
            f"\ntarget: SFT on SQLite at {sizes[-1]} trajectories >= 20000/s: {wall:.0f}/s wall, "
            f"{cpu:.0f}/s per CPU second: {verdict} (wall); load average {os.getloadavg()[0]:.1f} on "
            f"{os.cpu_count()} CPUs"
        )


if __name__ == "__main__":
    main()
