"""Capture SDK cost on the app thread and end-to-end throughput, against a raw executemany baseline.

    /work/main/.venv/bin/python benchmarks/bench_capture.py [--n 10000] [--app-n 20000] [--rounds 5] [--prefill N] [--profile | --parts]

Measures, in one run:

* app thread: the time one ``with client.trajectory(...)`` block with a user and an assistant
  message takes (the writer threads running meanwhile), median and p99 in microseconds;
* throughput: trajectories per second from the first record until ``flush()`` returns, i.e. in
  the database, for SQLite (fresh file) and PostgreSQL (own schema in database ``test``);
* baseline: the same rows written by a plain DB-API ``executemany`` INSERT into the same table, in
  batches of the same size, one transaction per batch, JSON columns serialized inside the timing;
* store.ingest alone: the same records, validated beforehand, through ``learnloop.store.ingest``
  (what the in-process transport calls): the ceiling the SDK can reach, which separates the
  SDK's own cost (queue, serialize, validate, spool fsync) from the store's.

Each round measures raw, store.ingest and SDK back to back (interleaved, so drift on a shared
machine hits all alike); a ratio is computed within each round, and the table prints the median
of the ``--rounds`` per-round ratios with their range (and the median rates).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from learnloop.capture import CaptureClient  # noqa: E402
from learnloop.config import Settings  # noqa: E402
from learnloop.ids import new_id  # noqa: E402
from learnloop.store import Database  # noqa: E402
from learnloop.store.trajectories import prompt_hash  # noqa: E402

PG_ADMIN_URL = os.environ.get("LEARNLOOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SYSTEM = "You are a helpful assistant for an online shop."


def messages(k: int) -> list[dict]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Where is my order {k}? I ordered it last week and it has not arrived."},
        {"role": "assistant", "content": f"Order {k} shipped yesterday and should arrive within two days."},
    ]


def record(client: CaptureClient, k: int) -> None:
    with client.trajectory(scenario="orders", tags=["bench"], metadata={"session": k // 7}) as t:
        t.system(SYSTEM)
        t.user(f"Where is my order {k}? I ordered it last week and it has not arrived.")
        t.assistant(f"Order {k} shipped yesterday and should arrive within two days.")


def make_client(url: str, spool: Path, settings: Settings) -> CaptureClient:
    return CaptureClient(settings, database=url, spool_dir=spool)


def app_thread_cost(url: str, n: int, settings: Settings) -> tuple[float, float]:
    client = make_client(url, Path(tempfile.mkdtemp()) / "spool", settings)
    try:
        for k in range(500):  # warm up (imports, first connection, migrations)
            record(client, k)
        client.flush(120)
        clock = time.perf_counter_ns
        times = []
        for k in range(n):
            t0 = clock()
            record(client, k)
            times.append(clock() - t0)
        client.flush(600)
    finally:
        client.close(30)
    times.sort()
    return statistics.median(times) / 1000, times[int(len(times) * 0.99)] / 1000


def sdk_throughput(url: str, n: int, settings: Settings) -> float:
    client = make_client(url, Path(tempfile.mkdtemp()) / "spool", settings)
    try:
        record(client, 0)
        client.flush(120)  # migrations and first connection happen outside the timing
        start = time.perf_counter()
        for k in range(n):
            record(client, k)
        assert client.flush(600), client.stats()
        elapsed = time.perf_counter() - start
    finally:
        client.close(30)
    return n / elapsed


def direct_ingest(url: str, n: int, batch_size: int) -> float:
    """The same records through ``store.ingest`` with validation done beforehand: what the store itself costs."""
    from learnloop.capture.writer import dumps
    from learnloop.store import ingest
    from learnloop.store.records import batch_from_json

    recs = [{"id": new_id(), "scenario": "orders", "tags": ["bench"], "metadata": {"session": k // 7},
             "messages": messages(k)} for k in range(n)]
    batches = [batch_from_json(dumps({"trajectories": recs[i:i + batch_size]}))
               for i in range(0, n, batch_size)]
    db = Database(url)
    try:
        start = time.perf_counter()
        for b in batches:
            with db.session() as s:
                ingest(s, b)
        elapsed = time.perf_counter() - start
    finally:
        db.dispose()
    return n / elapsed


COLUMNS = ("id", "idempotency_key", "project", "scenario", "source", "messages", "metadata", "tags", "prompt_hash",
           "split", "created_at", "ingested_at")


def raw_executemany(url: str, n: int, batch_size: int) -> float:
    """The same rows through a bare DB-API cursor: the floor any SDK path pays for."""
    db = Database(url)
    rows = []
    for k in range(n):
        msgs = messages(k)
        tid = new_id()
        rows.append((tid, tid, "default", "orders", "production", msgs, {"session": k // 7}, ["bench"],
                     prompt_hash(msgs), "train"))
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        sqlite = db.dialect == "sqlite"
        ph = "?" if sqlite else "%s"
        sql = f"INSERT INTO trajectories ({', '.join(COLUMNS)}) VALUES ({', '.join([ph] * len(COLUMNS))})"
        start = time.perf_counter()
        for i in range(0, n, batch_size):
            now = dt.datetime.now(dt.UTC)
            stamp = now.replace(tzinfo=None).isoformat(sep=" ") if sqlite else now
            batch = [(*r[:5], json.dumps(r[5]), json.dumps(r[6]), json.dumps(r[7]), *r[8:], stamp, stamp)
                     for r in rows[i:i + batch_size]]
            if sqlite:
                cur.execute("BEGIN IMMEDIATE")
                cur.executemany(sql, batch)
                cur.execute("COMMIT")
            else:
                cur.executemany(sql, batch)
                raw.commit()
        elapsed = time.perf_counter() - start
    finally:
        raw.close()
        db.dispose()
    return n / elapsed


def parts(url: str, n: int, batch_size: int, rounds: int) -> dict[str, list[float]]:
    """µs per trajectory of each piece of the SDK's path, run one after the other on one thread,
    a batch at a time as the writer runs them; beside the raw baseline, from the same table state.

    Recording goes to a sink that encodes each record as ``BackgroundWriter.submit`` does, so
    it is the app thread's work without the queue; the batch body is joined as the spooler
    joins it.
    """
    from learnloop.capture.recorder import TrajectoryRecorder
    from learnloop.capture.writer import BackgroundWriter, dumps
    from learnloop.store.records import batch_from_json
    from learnloop.store.trajectories import apply_plan, plan_ingest

    class Sink:  # stands in for the client: what submit_trajectory hands the writer
        def __init__(self) -> None:
            self.items: list[tuple[str, bytes]] = []

        def submit_trajectory(self, record: dict, extra_feedback: list = (), *, force: bool = False) -> bool:
            self.items.append(("trajectories", dumps(record)))
            return True

    db = Database(url)
    clock = time.perf_counter
    out: dict[str, list[float]] = {k: [] for k in ("record", "validate", "plan", "insert", "raw")}
    try:
        for _ in range(rounds):
            sink = Sink()
            start = clock()
            for k in range(n):
                with TrajectoryRecorder(sink, scenario="orders", tags=["bench"], metadata={"session": k // 7}) as t:
                    t.system(SYSTEM)
                    t.user(f"Where is my order {k}? I ordered it last week and it has not arrived.")
                    t.assistant(f"Order {k} shipped yesterday and should arrive within two days.")
            out["record"].append((clock() - start) / n * 1e6)
            bodies = [BackgroundWriter._join(sink.items[i:i + batch_size]).body for i in range(0, n, batch_size)]
            del sink
            reset_table(url, 0, batch_size)
            spent = {"validate": 0.0, "plan": 0.0, "insert": 0.0}
            for body in bodies:
                t0 = clock()
                batch = batch_from_json(body)
                t1 = clock()
                plan = plan_ingest(batch, db.engine.dialect)
                del batch
                t2 = clock()
                with db.connection() as conn:
                    apply_plan(conn, plan)
                t3 = clock()
                spent["validate"] += t1 - t0
                spent["plan"] += t2 - t1
                spent["insert"] += t3 - t2
            for k, v in spent.items():
                out[k].append(v / n * 1e6)
            reset_table(url, 0, batch_size)
            out["raw"].append(1e6 / raw_executemany(url, n, batch_size))
    finally:
        db.dispose()
    return out


def reset_table(url: str, prefill: int, batch_size: int) -> None:
    """Empty the trajectories table (and what hangs off it), then insert ``prefill`` rows, untimed."""
    db = Database(url)
    try:
        with db.engine.begin() as conn:
            if db.dialect == "sqlite":
                for table in ("scores", "feedback", "trajectories"):
                    conn.exec_driver_sql(f"DELETE FROM {table}")
            else:
                conn.exec_driver_sql("TRUNCATE trajectories CASCADE")
        if db.dialect == "sqlite":
            with db.engine.connect() as conn:  # give the freed pages back, so each run starts alike
                conn.exec_driver_sql("COMMIT")
                conn.exec_driver_sql("VACUUM")
    finally:
        db.dispose()
    if prefill:
        raw_executemany(url, prefill, max(batch_size, 5000))


def pg_schema_url() -> tuple[str, str] | None:
    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        schema = f"ll_bench_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        admin.dispose()
    except Exception as exc:
        print(f"PostgreSQL not reachable at {PG_ADMIN_URL} ({exc.__class__.__name__}); skipping it")
        return None
    sep = "&" if "?" in PG_ADMIN_URL else "?"
    return f"{PG_ADMIN_URL}{sep}options=-csearch_path%3D{schema}", schema


def drop_schema(schema: str) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="trajectories per throughput round")
    ap.add_argument("--app-n", type=int, default=20_000, help="trajectories timed on the app thread")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians and ranges are reported")
    ap.add_argument("--prefill", type=int, default=0,
                    help="rows in the table before each measurement (inserts slow down as a table grows)")
    ap.add_argument("--profile", action="store_true", help="cProfile one SQLite SDK round and print the top entries")
    ap.add_argument("--parts", action="store_true",
                    help="µs per trajectory of recording, validation, planning and the insert (SQLite, one thread)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ll-bench-capture-"))
    settings = Settings(data_dir=tmp / "data")
    batch_size = settings.capture.batch_size
    sqlite_url = f"sqlite:///{tmp / 'bench.db'}"
    Database(sqlite_url).upgrade()

    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        sdk_throughput(sqlite_url, args.n, settings)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return

    if args.parts:
        measured = parts(sqlite_url, args.n, batch_size, args.rounds)
        print(f"SQLite, one thread, batches of {batch_size}: µs per trajectory, median (range) of {args.rounds} rounds")
        for name, values in measured.items():
            print(f"  {name:<9} {statistics.median(values):6.1f}  ({min(values):.1f}–{max(values):.1f})")
        sdk_path = [sum(v) for v in zip(*(measured[k] for k in ("record", "validate", "plan", "insert")))]
        print(f"  sum of the SDK's pieces ÷ raw: {statistics.median([r / s for r, s in zip(measured['raw'], sdk_path)]):.2f}")
        return

    median, p99 = app_thread_cost(sqlite_url, args.app_n, settings)
    results = []
    targets = [("sqlite", sqlite_url, None)]
    pg = pg_schema_url()
    if pg:
        Database(pg[0]).upgrade()
        targets.append(("postgresql", pg[0], pg[1]))
    try:
        for name, url, _ in targets:
            rounds = []
            for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits all alike
                measured = []
                for measure in (lambda url=url: raw_executemany(url, args.n, batch_size),
                                lambda url=url: direct_ingest(url, args.n, batch_size),
                                lambda url=url: sdk_throughput(url, args.n, settings)):
                    # Each from the same table: inserts slow down as the table grows, which
                    # would otherwise penalise whichever measure runs later in a round.
                    reset_table(url, args.prefill, batch_size)
                    measured.append(measure())
                base, store, sdk = measured
                rounds.append((sdk, base, store))
            results.append((name, rounds))
    finally:
        if pg:
            drop_schema(pg[1])

    from rich.console import Console
    from rich.table import Table

    def ratio(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"

    def rate(values: list[float]) -> str:
        return f"{statistics.median(values):,.0f}"

    table = Table(title=f"learnloop capture ({args.n} trajectories/round into a table of {args.prefill} rows, "
                        f"batch {batch_size}, {args.rounds} interleaved rounds: medians, ratio range in brackets)")
    for col in ("measure", "value", "baseline", "ratio", "target"):
        table.add_column(col)
    table.add_row("app thread per trajectory, median", f"{median:.1f} µs", "", "", "< 20 µs")
    table.add_row("app thread per trajectory, p99", f"{p99:.1f} µs", "", "", "")
    for name, rounds in results:
        sdk = [r[0] for r in rounds]
        base = [r[1] for r in rounds]
        store = [r[2] for r in rounds]
        table.add_row(f"SDK → {name}, trajectories/s", rate(sdk), f"{rate(base)} raw executemany",
                      ratio([s / b for s, b, _ in rounds]), ">= 0.8")
        table.add_row(f"  store.ingest alone → {name}", rate(store), f"{rate(base)} raw executemany",
                      ratio([st / b for _, b, st in rounds]), "(ceiling for the SDK)")
        table.add_row(f"  SDK vs store.ingest alone → {name}", rate(sdk), f"{rate(store)} store.ingest",
                      ratio([s / st for s, _, st in rounds]), "(SDK's own overhead)")
    Console(width=max(140, Console().width)).print(table)


if __name__ == "__main__":
    main()
