"""Capture: app-thread cost per record and end-to-end rows/s, against OpenTelemetry and database floors.

    .venv/bin/python benchmarks/bench_capture.py            # 50,000 rows per arm, 3 rounds
    .venv/bin/python benchmarks/bench_capture.py --quick    # 10,000 rows per arm, 1 round (~1 min)

Every arm writes the same rows (ids, the 12 columns the SDK fills, the same JSON payloads) into
the ``trajectories`` table, emptied before each arm, in batches of the SDK's ``batch_size`` with
one transaction per batch, on SQLite (a fresh file) and PostgreSQL (its own schema in ``test``):

* **learnloop SDK**: ``with client.trajectory(...)`` with a system, a user and an assistant
  message, per record, then ``flush()``: recorded, spooled with an fsync, validated and stored.
  The app thread's time per record is taken around each ``with`` block while the writer runs.
* **OpenTelemetry SDK** (the peer): a ``TracerProvider`` with a ``BatchSpanProcessor`` (the same
  batch size and schedule delay, a queue big enough that it drops nothing) and an exporter that
  turns each span into the same row and inserts a batch with ``executemany``. Each record is one
  span whose messages are one JSON attribute (the cheapest way to carry them, as attributes take
  no dicts); the app thread's time is taken around each span as for learnloop, then
  ``force_flush()``.
* **store.ingest**: the same records, validated before the clock, through ``learnloop.store.ingest``.
* **naive DB-API**: a bare cursor's ``executemany`` INSERT of rows built before the clock, the
  JSON columns encoded inside it with the SDK's own encoder (``learnloop.jsonio.dumps``).
* **floor**: the fastest the database takes these rows from Python, everything encoded before
  the clock: PostgreSQL ``COPY ... FROM STDIN`` through psycopg; on SQLite one prebuilt
  multi-row ``INSERT ... VALUES (...), (...)`` per batch.

Arms run in an order rotated each round, so drift on a shared machine does not favour one arm.
The tables print medians over rounds, with ranges: rows/s (wall clock, from the first record to
the last row committed), and this process's CPU time per row, which a busy machine inflates less.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from learnloop.capture import CaptureClient  # noqa: E402
from learnloop.config import Settings  # noqa: E402
from learnloop.ids import new_id  # noqa: E402
from learnloop.jsonio import dumps, dumps_str  # noqa: E402
from learnloop.store import Database  # noqa: E402
from learnloop.store.trajectories import DEFAULT_HOLDOUT_FRACTION, assign_split, prompt_hash  # noqa: E402

PG_ADMIN_URL = os.environ.get("LEARNLOOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SYSTEM = "You are a helpful assistant for an online shop."
# The columns the SDK fills for these records; the others stay NULL in every arm.
COLUMNS = (
    "id",
    "idempotency_key",
    "project",
    "scenario",
    "source",
    "messages",
    "metadata",
    "tags",
    "prompt_hash",
    "split",
    "created_at",
    "ingested_at",
)


def user_text(k: int) -> str:
    return f"Where is my order {k}? I ordered it last week and it has not arrived."


def answer_text(k: int) -> str:
    return f"Order {k} shipped yesterday and should arrive within two days."


def messages(k: int) -> list[dict]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": user_text(k)},
        {"role": "assistant", "content": answer_text(k)},
    ]


def row(tid: str, k: int, msgs: list[dict], created: dt.datetime) -> tuple:
    """One table row (Python values; the JSON columns as objects)."""
    hashed = prompt_hash(msgs)
    return (
        tid,
        tid,
        "default",
        "orders",
        "production",
        msgs,
        {"session": k // 7},
        ["bench"],
        hashed,
        assign_split(hashed, DEFAULT_HOLDOUT_FRACTION).value,
        created,
        created,
    )


def db_value(v: object, sqlite: bool) -> object:
    """A datetime as the column stores it (SQLite: naive UTC text)."""
    if isinstance(v, dt.datetime) and sqlite:
        return v.replace(tzinfo=None).isoformat(sep=" ")
    return v


class Writer:
    """A bare DB-API connection writing rows the way each baseline arm does, one transaction per batch."""

    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self.sqlite = self.db.dialect == "sqlite"
        self.raw = self.db.engine.raw_connection()
        self.cur = self.raw.cursor()
        mark = "?" if self.sqlite else "%s"
        self.one = "(" + ", ".join([mark] * len(COLUMNS)) + ")"
        self.insert = f"INSERT INTO trajectories ({', '.join(COLUMNS)}) VALUES "

    def encoded(self, r: tuple) -> tuple:
        """JSON columns encoded with the SDK's encoder, datetimes as the column stores them."""
        return (
            *r[:5],
            dumps_str(r[5]),
            dumps_str(r[6]),
            dumps_str(r[7]),
            r[8],
            r[9],
            db_value(r[10], self.sqlite),
            db_value(r[11], self.sqlite),
        )

    def transaction(self, work: Callable[[], None]) -> None:
        if self.sqlite:
            self.cur.execute("BEGIN IMMEDIATE")
            work()
            self.cur.execute("COMMIT")
        else:
            work()
            self.raw.commit()

    def executemany(self, rows: list[tuple]) -> None:
        self.transaction(lambda: self.cur.executemany(self.insert + self.one, rows))

    def close(self) -> None:
        self.raw.close()
        self.db.dispose()


# -- arms: each returns (rows/s, app-thread µs per record or None) -----------------------------


def arm_learnloop(url: str, n: int, settings: Settings) -> tuple[float, float, list[float]]:
    client = CaptureClient(settings, database=url, spool_dir=Path(tempfile.mkdtemp()) / "spool")
    clock = time.perf_counter_ns
    times = []
    try:
        with client.trajectory(scenario="warm-up") as t:  # migrations and the first connection, untimed
            t.user("hi")
        client.flush(120)
        reset_table(url)
        start, cpu = time.perf_counter(), time.process_time()
        for k in range(n):
            t0 = clock()
            with client.trajectory(scenario="orders", tags=["bench"], metadata={"session": k // 7}) as t:
                t.system(SYSTEM)
                t.user(user_text(k))
                t.assistant(answer_text(k))
            times.append((clock() - t0) / 1000)
        assert client.flush(600), client.stats()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        client.close(30)
    return stored(url, n) / elapsed, cpu / n * 1e6, times


def arm_otel(
    url: str, n: int, settings: Settings, queue_size: int | None = None
) -> tuple[float, float, list[float]]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class RowExporter(SpanExporter):
        """Each span becomes the row learnloop stores; a batch is one executemany in one transaction."""

        def __init__(self) -> None:
            self.writer = Writer(url)

        def export(self, spans) -> SpanExportResult:  # noqa: ANN001 (OpenTelemetry's signature)
            w = self.writer
            now = dt.datetime.now(dt.UTC)
            rows = []
            for span in spans:
                a = span.attributes
                raw_messages = a["gen_ai.messages"]
                msgs = orjson.loads(raw_messages)
                tid = f"{span.context.trace_id:032x}"
                created = dt.datetime.fromtimestamp(span.start_time / 1e9, dt.UTC)
                hashed = prompt_hash(msgs)
                rows.append(
                    (
                        tid,
                        tid,
                        "default",
                        a["learnloop.scenario"],
                        "production",
                        raw_messages,
                        dumps_str({"session": a["session"]}),
                        dumps_str(list(a["learnloop.tags"])),
                        hashed,
                        assign_split(hashed, DEFAULT_HOLDOUT_FRACTION).value,
                        db_value(created, w.sqlite),
                        db_value(now, w.sqlite),
                    )
                )
            w.executemany(rows)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            self.writer.close()

    cap = settings.capture
    exporter = RowExporter()
    processor = BatchSpanProcessor(
        exporter,
        max_queue_size=queue_size or n + 1,
        schedule_delay_millis=int(cap.flush_interval * 1000),
        max_export_batch_size=cap.batch_size,
    )
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("bench")
    clock = time.perf_counter_ns
    times = []
    try:
        start, cpu = time.perf_counter(), time.process_time()
        for k in range(n):
            t0 = clock()
            with tracer.start_as_current_span(
                "orders",
                attributes={"learnloop.scenario": "orders", "learnloop.tags": ("bench",), "session": k // 7},
            ) as span:
                msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user_text(k)}]
                msgs.append({"role": "assistant", "content": answer_text(k)})
                span.set_attribute("gen_ai.messages", dumps_str(msgs))
            times.append((clock() - t0) / 1000)
        assert provider.force_flush(600_000)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        provider.shutdown()
    return stored(url, n) / elapsed, cpu / n * 1e6, times


def arm_ingest(url: str, n: int, batch_size: int) -> tuple[float, float, None]:
    from learnloop.store import ingest
    from learnloop.store.records import batch_from_json

    recs = [
        {
            "id": new_id(),
            "scenario": "orders",
            "tags": ["bench"],
            "metadata": {"session": k // 7},
            "messages": messages(k),
            "created_at": dt.datetime.now(dt.UTC),
        }
        for k in range(n)
    ]
    batches = [
        batch_from_json(dumps({"trajectories": recs[i : i + batch_size]})) for i in range(0, n, batch_size)
    ]
    db = Database(url)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        for b in batches:
            with db.connection() as conn:
                ingest(conn, b)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        db.dispose()
    return stored(url, n) / elapsed, cpu / n * 1e6, None


def source_rows(n: int) -> list[tuple]:
    now = dt.datetime.now(dt.UTC)
    return [row(new_id(), k, messages(k), now) for k in range(n)]


def arm_naive(url: str, n: int, batch_size: int) -> tuple[float, float, None]:
    rows = source_rows(n)
    w = Writer(url)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(0, n, batch_size):
            w.executemany([w.encoded(r) for r in rows[i : i + batch_size]])
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        w.close()
    return stored(url, n) / elapsed, cpu / n * 1e6, None


def arm_floor(url: str, n: int, batch_size: int) -> tuple[float, float, None]:
    w = Writer(url)
    rows = [w.encoded(r) for r in source_rows(n)]
    batches = [rows[i : i + batch_size] for i in range(0, n, batch_size)]
    try:
        if w.sqlite:
            statements = [
                (w.insert + ", ".join([w.one] * len(b)), [v for r in b for v in r]) for b in batches
            ]
            start, cpu = time.perf_counter(), time.process_time()
            for sql, params in statements:
                w.transaction(lambda sql=sql, params=params: w.cur.execute(sql, params))
        else:
            copy_sql = f"COPY trajectories ({', '.join(COLUMNS)}) FROM STDIN"

            def copy(batch: list[tuple]) -> None:
                with w.cur.copy(copy_sql) as c:
                    for r in batch:
                        c.write_row(r)

            start, cpu = time.perf_counter(), time.process_time()
            for b in batches:
                w.transaction(lambda b=b: copy(b))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        w.close()
    return stored(url, n) / elapsed, cpu / n * 1e6, None


# -- harness ------------------------------------------------------------------------------------


def stored(url: str, n: int) -> int:
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            count = conn.execute(text("SELECT count(*) FROM trajectories")).scalar_one()
    finally:
        db.dispose()
    if count != n:
        print(f"  note: {count} of {n} rows stored")
    return count


def reset_table(url: str) -> None:
    """Empty the trajectories table (and what hangs off it), so every arm starts alike."""
    db = Database(url)
    try:
        with db.engine.begin() as conn:
            if db.dialect == "sqlite":
                for table in ("scores", "feedback", "trajectories"):
                    conn.exec_driver_sql(f"DELETE FROM {table}")
            else:
                conn.exec_driver_sql("TRUNCATE trajectories CASCADE")
        if db.dialect == "sqlite":
            with db.engine.connect() as conn:  # give the freed pages back
                conn.exec_driver_sql("COMMIT")
                conn.exec_driver_sql("VACUUM")
    finally:
        db.dispose()


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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def spread(values: list[float], fmt: str = ",.0f") -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="rows per arm")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, arms in rotated order")
    ap.add_argument("--quick", action="store_true", help="10,000 rows per arm, 1 round")
    ap.add_argument("--sqlite-only", action="store_true", help="skip PostgreSQL")
    args = ap.parse_args()
    if args.quick:
        args.n, args.rounds = 10_000, 1

    tmp = Path(tempfile.mkdtemp(prefix="ll-bench-capture-"))
    settings = Settings(data_dir=tmp / "data")
    batch_size = settings.capture.batch_size
    targets = [("SQLite", f"sqlite:///{tmp / 'bench.db'}")]
    pg = None if args.sqlite_only else pg_schema_url()
    if pg:
        targets.append(("PostgreSQL", pg[0]))
    arms: dict[str, Callable[[str], tuple[float, float, list[float] | None]]] = {
        "learnloop SDK": lambda url: arm_learnloop(url, args.n, settings),
        "OpenTelemetry SDK": lambda url: arm_otel(url, args.n, settings),
        "store.ingest": lambda url: arm_ingest(url, args.n, batch_size),
        "naive DB-API": lambda url: arm_naive(url, args.n, batch_size),
        "floor": lambda url: arm_floor(url, args.n, batch_size),
    }
    names = list(arms)
    rates: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    app: dict[tuple[str, str], list[float]] = {}
    drops: dict[str, str] = {}
    try:
        for db_name, url in targets:
            Database(url).upgrade()
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for arm in order:
                    reset_table(url)
                    rate, cpu, times = arms[arm](url)
                    print(
                        f"{db_name:<10} round {r + 1}  {arm:<18} {rate:>9,.0f} rows/s  {cpu:6.1f} CPU µs/row",
                        flush=True,
                    )
                    rates.setdefault((db_name, arm), []).append(rate)
                    cpus.setdefault((db_name, arm), []).append(cpu)
                    if times:
                        app.setdefault((db_name, arm), []).extend(times)
            # What OpenTelemetry's default queue (2048 spans) keeps of the same burst.
            reset_table(url)
            arm_otel(url, args.n, settings, queue_size=2048)
            drops[db_name] = f"{stored(url, args.n):,} of {args.n:,}"
    finally:
        if pg:
            drop_schema(pg[1])

    print()
    print(f"{args.n:,} rows per arm, batches of {batch_size}, {args.rounds} round(s): medians (range)")
    print()
    print("| rows/s | " + " | ".join(db for db, _ in targets) + " |")
    print("|---|" + "---:|" * len(targets))
    for arm in names:
        print(f"| {arm} | " + " | ".join(spread(rates[(db, arm)]) for db, _ in targets) + " |")
    for arm in names[1:]:
        ratios = [
            statistics.median(rates[(db, names[0])]) / statistics.median(rates[(db, arm)])
            for db, _ in targets
        ]
        print(f"| learnloop SDK ÷ {arm} | " + " | ".join(f"{x:.2f}" for x in ratios) + " |")
    print()
    print(
        "| CPU µs per row, this process (the database server's excluded) | "
        + " | ".join(db for db, _ in targets)
        + " |"
    )
    print("|---|" + "---:|" * len(targets))
    for arm in names:
        print(f"| {arm} | " + " | ".join(spread(cpus[(db, arm)], ".1f") for db, _ in targets) + " |")
    print()
    print("| app thread per record, µs | median | p99 |")
    print("|---|---:|---:|")
    for db, _ in targets:
        for arm in ("learnloop SDK", "OpenTelemetry SDK"):
            times = app[(db, arm)]
            print(f"| {arm} ({db}) | {statistics.median(times):.1f} | {percentile(times, 0.99):.1f} |")
    print()
    for db, kept in drops.items():
        print(
            f"OpenTelemetry with its default queue (2048 spans), the same burst into {db}: {kept} rows stored"
        )


if __name__ == "__main__":
    main()
