"""OTLP trace ingest throughput against a real `learnloop serve`, with `/v1/ingest` of the same
content as the baseline.

    .venv/bin/python benchmarks/bench_otlp.py [--exports 40] [--traces 50] [--no-postgres]

The content is what an instrumented agent exports: per trace, an agent span, two chat calls in the
GenAI conventions (system + user + assistant, usage, model) and a tool span; made with the real
OpenTelemetry SDK and encoded by its OTLP encoder, as its exporter sends it (one export per batch
of ``--traces`` traces, sent one after another as the batch span processor does). For SQLite (a
fresh file) and PostgreSQL (a fresh schema, when the server answers), each mode gets its own
server and database, and the rates are spans per second of wall time and per CPU second of the
server process (the steadier figure on a shared machine), medians over ``--rounds`` rounds:

* /v1/ingest: the trajectories the OTLP mapping makes of the same spans, POSTed as JSON batches
  (one batch per export): the baseline;
* otlp protobuf, otlp protobuf+gzip, otlp json: the exports themselves to /otlp/v1/traces.

Every mode stores the same number of trajectories (checked); each rate is printed with its ratio
to the baseline measured in the same run.
"""
# run.sh --quick: --exports 3 --traces 10 --rounds 1

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_ingest_http import _check, drop_schema, free_port, pg_schema_url  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from learnloop.capture.otlp import decode_protobuf, map_spans, trajectories  # noqa: E402
from learnloop.jsonio import dumps  # noqa: E402
from learnloop.store import Database  # noqa: E402

SPANS_PER_TRACE = 4


def _msgs(*pairs: tuple[str, str]) -> str:
    return json.dumps([{"role": r, "parts": [{"type": "text", "content": c}]} for r, c in pairs])


def make_exports(n_exports: int, traces: int) -> list[list]:
    """``n_exports`` lists of finished SDK spans, ``traces`` agent runs each (fresh random ids)."""
    sink = InMemorySpanExporter()
    tp = TracerProvider(
        resource=Resource.create({"service.name": "bench-agent", "learnloop.scenario": "bench"})
    )
    tp.add_span_processor(SimpleSpanProcessor(sink))
    tracer = tp.get_tracer("bench")
    exports = []
    for e in range(n_exports):
        for t in range(traces):
            k = e * traces + t
            question = f"Question number {k}: what is {k} + {k}? " + "context " * 40
            with tracer.start_as_current_span("agent", attributes={"learnloop.agent": "solver"}):
                first = {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": "gpt-bench",
                    "gen_ai.usage.input_tokens": 80,
                    "gen_ai.usage.output_tokens": 40,
                    "gen_ai.input.messages": _msgs(
                        ("system", "You are a helpful assistant."), ("user", question)
                    ),
                    "gen_ai.output.messages": _msgs(("assistant", "Let me compute. " + "thinking " * 20)),
                }
                with tracer.start_as_current_span("chat gpt-bench", attributes=first):
                    pass
                with tracer.start_as_current_span(
                    "execute_tool add", attributes={"gen_ai.operation.name": "execute_tool"}
                ):
                    pass
                second = dict(first)
                second["gen_ai.input.messages"] = _msgs(
                    ("system", "You are a helpful assistant."),
                    ("user", question),
                    ("assistant", "Let me compute. " + "thinking " * 20),
                    ("user", "And the answer?"),
                )
                second["gen_ai.output.messages"] = _msgs(
                    ("assistant", f"The answer is {2 * k}. " + "explanation " * 30)
                )
                with tracer.start_as_current_span("chat gpt-bench", attributes=second):
                    pass
        exports.append(list(sink.get_finished_spans()))
        sink.clear()
    return exports


def bodies(mode: str, exports: list[list]) -> tuple[str, list[tuple[bytes, dict[str, str]]], int]:
    """The request path, bodies and headers for ``mode``, and how many trajectories they hold."""
    out = []
    stored = 0
    for spans in exports:
        request = encode_spans(spans)
        pb = request.SerializeToString()
        if mode == "/v1/ingest":
            records = trajectories(map_spans(decode_protobuf(pb)))  # what OTLP ingest stores, as SDK batches
            stored += len(records)
            out.append((dumps({"trajectories": records}), {"Content-Type": "application/json"}))
            continue
        stored += len({s.context.trace_id for s in spans})
        if mode == "otlp protobuf":
            out.append((pb, {"Content-Type": "application/x-protobuf"}))
        elif mode == "otlp protobuf+gzip":
            out.append(
                (gzip.compress(pb), {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
            )
        else:
            doc = json_format.MessageToDict(request)
            for rs in doc["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    for sp in ss["spans"]:
                        for key in ("traceId", "spanId", "parentSpanId"):
                            if key in sp:
                                sp[key] = base64.b64decode(sp[key]).hex()  # OTLP/JSON ids are hex
            out.append((json.dumps(doc).encode(), {"Content-Type": "application/json"}))
    path = "/v1/ingest" if mode == "/v1/ingest" else "/otlp/v1/traces"
    return path, out, stored


def serve_and_send(
    url: str, path: str, requests: list[tuple[bytes, dict[str, str]]], data_dir: Path
) -> float:
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
        server = psutil.Process(proc.pid)
        with httpx.Client(base_url=base, timeout=120) as client:
            client.post(path, content=requests[0][0], headers=requests[0][1]).raise_for_status()  # warm-up
            cpu = sum(server.cpu_times()[:2])
            start = time.perf_counter()
            for body, headers in requests[1:]:
                r = client.post(path, content=body, headers=headers)
                r.raise_for_status()
            return time.perf_counter() - start, sum(server.cpu_times()[:2]) - cpu
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def measure(name: str, mode: str, args: argparse.Namespace, tmp: Path, n: int) -> tuple[float, float] | None:
    """Wall and server CPU seconds to send ``args.exports`` exports in ``mode`` to a fresh server
    and database (None: PostgreSQL is not reachable)."""
    path, requests, expected = bodies(mode, make_exports(args.exports + 1, args.traces))
    schema = None
    if name == "sqlite":
        url = f"sqlite:///{tmp / f'{n}.db'}"
    else:
        pg = pg_schema_url()
        if pg is None:
            return None
        schema, url = pg
    db = Database(url)
    db.upgrade()
    try:
        seconds = serve_and_send(url, path, requests, tmp / f"data-{n}")
        _check(db, expected)
    finally:
        db.dispose()
        if schema is not None:
            drop_schema(schema)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exports", type=int, default=40, help="exports (requests) per mode, plus one warm-up")
    ap.add_argument("--traces", type=int, default=50, help="agent runs (4 spans, 2 LLM calls) per export")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every mode, in turn; medians are shown")
    ap.add_argument("--no-postgres", action="store_true")
    args = ap.parse_args()
    spans = args.exports * args.traces * SPANS_PER_TRACE
    print(
        f"{args.exports} exports x {args.traces} traces x {SPANS_PER_TRACE} spans = {spans} spans "
        f"({args.exports * args.traces} trajectories) per measurement, after one warm-up export; "
        f"median of {args.rounds} rounds (each mode in turn)\n"
    )
    print(
        f"{'database':<11} {'mode':<20} {'spans/s':>8} {'vs ingest':>9} {'spans/CPU-s':>12} {'vs ingest':>9}"
        "  spans/s of each round"
    )
    modes = ("/v1/ingest", "otlp protobuf", "otlp protobuf+gzip", "otlp json")
    n = 0
    with tempfile.TemporaryDirectory(prefix="ll-bench-otlp-") as tmp:
        for name in ["sqlite"] if args.no_postgres else ["sqlite", "postgresql"]:
            runs: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
            for _ in range(args.rounds):
                for mode in modes:
                    n += 1
                    measured = measure(name, mode, args, Path(tmp), n)
                    if measured is not None:
                        runs[mode].append(measured)
            if not runs[modes[0]]:
                continue
            base_wall = spans / statistics.median(w for w, _ in runs[modes[0]])
            # CPU times tick every 10 ms: a run shorter than a tick (a --quick run) has no CPU figure.
            base_cpu = _rate(spans, statistics.median(c for _, c in runs[modes[0]]))
            for mode in modes:
                wall = spans / statistics.median(w for w, _ in runs[mode])
                cpu = _rate(spans, statistics.median(c for _, c in runs[mode]))
                each = " ".join(f"{spans / w:.0f}" for w, _ in runs[mode])
                cpu_text = (
                    f"{cpu:>12.0f} {cpu / base_cpu:>8.2f}x" if cpu and base_cpu else f"{'-':>12} {'-':>9}"
                )
                print(f"{name:<11} {mode:<20} {wall:>8.0f} {wall / base_wall:>8.2f}x {cpu_text}  {each}")


def _rate(spans: int, seconds: float) -> float | None:
    return spans / seconds if seconds > 0 else None


if __name__ == "__main__":
    main()
