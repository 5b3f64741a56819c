"""What the gateway adds: `python benchmarks/bench_gateway.py [--quick]`.

Streams chat completions from an upstream (the demo's teacher, an OpenAI-compatible server answering
at once, ~18 chunks an answer) at 1 and at 50 concurrent streams over loopback, three ways, in the
same run and interleaved round by round:

* ``direct``: the client calls the upstream itself (the baseline);
* ``proxy``: through learnloop's ``learnloop`` alias pointing at ``upstream:teacher``, capture off;
* ``proxy+capture``: the same with every answer captured as teacher data (SQLite, sampling 1.0), the
  default a user runs.

The client reads every stream to its end, so its connections are reused (as the openai client's are).

Each request's latency is measured from sending it to the stream's ``[DONE]``; the latency a proxy
adds is its percentile minus the direct one (p50, p99), and its throughput is requests per second at
50 streams. At 1 stream the arms take turns request by request, at 50 round by round, so a machine
whose load drifts (a shared one) weighs on every arm alike. Each process's CPU time per request (from
/proc) is printed too: it moves less than latency with the machine's load, but a busier machine
inflates it as well (the upstream's own doubled between a load-4 and a load-7 run), so compare arms
of one run, not runs. When uvloop and
httptools are installed (``pip install "learnloop[fast]"``) an arm runs the capturing proxy on them;
``--workers N`` (default 2) adds one running it as N uvicorn worker processes on one port, and
``--compare-src DIR`` one importing learnloop from DIR (another commit's tree: a before/after measured
in the same run, on the same machine at the same time). Three processes (upstream, proxy, this
client) share the machine's cores, as they would on one host; the proxy is learnloop's real app
(routes, runtime, upstream backend, capture) under uvicorn,
with a stub local model that no request reaches (no torch loaded).
"""

# run.sh --quick: --quick

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

KEY_ENV = "BENCH_GATEWAY_KEY"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, headers: dict[str, str] | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers=headers, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


class NoModel:  # the local backend: no request in this benchmark reaches it
    def list(self) -> list[str]:
        return ["base"]


def _proxy_settings(upstream: str, data_dir: Path, capture: bool) -> Any:
    from learnloop.config import Settings

    return Settings(
        data_dir=data_dir,
        upstreams=[
            {
                "name": "teacher",
                "base_url": f"{upstream}/v1",
                "model": "rules-teacher",
                "api_key_env": KEY_ENV,
                "max_concurrency": 256,
                "price_per_1k_tokens": {"input": 0.0025, "output": 0.01},
            }
        ],
        serving={"capture": capture},
    )


def proxy_app() -> Any:
    """The proxy's app in one uvicorn worker process (``--workers``: each worker builds its own)."""
    from learnloop.api import create_app
    from learnloop.serving.runtime import ServedCapture, ServingRuntime
    from learnloop.serving.upstream import build_upstreams
    from learnloop.store.db import Database

    upstream, data_dir, capture = os.environ["BENCH_PROXY"].split("|")
    settings = _proxy_settings(upstream, Path(data_dir), capture == "on")
    db = Database(f"sqlite:///{Path(data_dir) / 'learnloop.db'}")
    runtime = ServingRuntime(
        NoModel(),
        db,
        capture=ServedCapture(settings, db) if settings.serving.capture else None,
        upstreams=build_upstreams(settings),
    )
    return create_app(settings, db, watch_inbox=False, serving=runtime)


def serve_proxy(
    port: int, upstream: str, data_dir: Path, capture: bool, fast: bool = False, workers: int = 1
) -> None:
    """The proxy process: learnloop's app, the alias on the upstream, uvicorn (``workers`` processes
    sharing the port when more than one)."""
    import uvicorn

    from learnloop.registry import move
    from learnloop.store.db import Database

    db = Database(f"sqlite:///{data_dir / 'learnloop.db'}")
    db.upgrade()
    move(
        db,
        _proxy_settings(upstream, data_dir, capture),
        "learnloop",
        "set",
        "upstream:teacher",
        actor="bench",
    )
    db.dispose()
    os.environ["BENCH_PROXY"] = f"{upstream}|{data_dir}|{'on' if capture else 'off'}"
    server = {"loop": "uvloop", "http": "httptools"} if fast else {"loop": "asyncio", "http": "h11"}
    if workers > 1:
        sys.path.insert(0, str(Path(__file__).parent))  # the workers import this module by name
        uvicorn.run(
            "bench_gateway:proxy_app",
            factory=True,
            workers=workers,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            **server,
        )
    else:
        uvicorn.run(proxy_app(), host="127.0.0.1", port=port, log_level="warning", **server)


async def _one(http: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]) -> float:
    started = time.perf_counter()
    done = None
    async with http.stream("POST", url, json=body, headers=headers) as resp:
        if resp.status_code != 200:
            await resp.aread()
            raise RuntimeError(f"{url}: HTTP {resp.status_code} {resp.text[:200]}")
        async for line in resp.aiter_lines():
            if line == "data: [DONE]":
                done = time.perf_counter()
        # Read to the body's end (as the openai client does), so the connection is kept for the
        # next request: leaving at [DONE] closed it, and every request paid a new TCP connection.
    if done is None:
        raise RuntimeError(f"{url}: the stream ended without [DONE]")
    return done - started


async def _run(
    arms: dict[str, tuple[str, str, str | None]], n: int, concurrency: int, order: list[str]
) -> dict[str, tuple[list[float], float]]:
    """``n`` streamed requests per arm over ``concurrency`` workers: {arm: (latencies in s, requests/s)}.

    At 1 stream the arms take turns request by request; at more, one arm after another in ``order``."""
    from learnloop.demo.task import cases

    batch = cases(42, n)
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    out: dict[str, tuple[list[float], float]] = {}
    clients = {name: httpx.AsyncClient(timeout=60, limits=limits) for name in arms}
    try:

        async def one(name: str, case: Any) -> float:
            url, model, key = arms[name]
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return await _one(
                clients[name], url, {"model": model, "messages": case.messages, "stream": True}, headers
            )

        for name in order:  # one unmeasured request per worker: connections open, caches warm
            await asyncio.gather(*(one(name, batch[0]) for _ in range(concurrency)))
        if concurrency == 1:
            lat: dict[str, list[float]] = {name: [] for name in arms}
            busy = dict.fromkeys(arms, 0.0)
            for i, case in enumerate(batch):
                turn = order[i % len(order) :] + order[: i % len(order)]
                for name in turn:
                    took = await one(name, case)
                    lat[name].append(took)
                    busy[name] += took
            return {name: (lat[name], n / busy[name]) for name in arms}
        for name in order:
            queue: asyncio.Queue[Any] = asyncio.Queue()
            for case in batch:
                queue.put_nowait(case)
            latencies: list[float] = []

            async def worker(
                arm: str = name, q: asyncio.Queue[Any] = queue, into: list[float] = latencies
            ) -> None:
                while not q.empty():
                    into.append(await one(arm, q.get_nowait()))

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            out[name] = (latencies, n / (time.perf_counter() - started))
        return out
    finally:
        for c in clients.values():
            await c.aclose()


def _cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every process under it (uvicorn's workers)."""
    total, parents = 0.0, {pid}
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
    grew = True
    while grew:  # descendants, whatever order /proc lists them in
        grew = False
        for p, fields in stats.items():
            if p not in parents and int(fields[1]) in parents:
                parents.add(p)
                grew = True
    for p in parents:
        if p in stats:
            total += int(stats[p][11]) + int(stats[p][12])
    return total / os.sysconf("SC_CLK_TCK")


def _settle(pids: list[int], timeout: float = 60) -> None:
    """Wait until these processes (and theirs) stop using CPU: every one imported and listening."""
    deadline = time.monotonic() + timeout
    last = sum(_cpu_seconds(p) for p in pids)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = sum(_cpu_seconds(p) for p in pids)
        if now - last < 0.05:
            return
        last = now


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="Fewer requests (a smoke run).")
    parser.add_argument("--requests", type=int, default=None, help="Requests per arm per round.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve-proxy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--capture", choices=["on", "off"], default="off", help=argparse.SUPPRESS)
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="Also run the capturing proxy as this many uvicorn worker processes (an arm; 1: no such arm).",
    )
    parser.add_argument(
        "--compare-src",
        type=Path,
        default=None,
        help="Also run the capturing proxy from this learnloop source tree (a checkout of another "
        "commit), as an arm of the same run: a before/after on the same machine at the same time.",
    )
    parser.add_argument("--fast", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--proxy-workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_proxy:
        serve_proxy(
            args.port, args.upstream, args.data_dir, args.capture == "on", args.fast, args.proxy_workers
        )
        return

    per_arm = args.requests or (60 if args.quick else 400)
    rounds = 1 if args.quick else args.rounds
    key = "sk-bench-gateway"
    env = {**os.environ, KEY_ENV: key}
    work = Path(tempfile.mkdtemp(prefix="learnloop-bench-gateway-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up_port = _free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "learnloop.demo.teacher",
                    "--port",
                    str(up_port),
                    "--api-key-env",
                    KEY_ENV,
                ],
                env=env,
            )
        )
        _wait_up(f"{upstream}/v1/models", {"Authorization": f"Bearer {key}"})
        proxies, pids = {}, {}
        # (arm, capture, uvloop+httptools, workers, source tree: None for this one)
        kinds: list[tuple[str, str, bool, int, Path | None]] = [
            ("proxy", "off", False, 1, None),
            ("proxy+capture", "on", False, 1, None),
        ]
        if _fast_available():
            kinds.append(("proxy+capture fast", "on", True, 1, None))
        if args.workers > 1:
            kinds.append((f"proxy+capture x{args.workers}", "on", False, args.workers, None))
        if args.compare_src is not None:
            kinds.append(("proxy+capture before", "on", False, 1, args.compare_src.resolve()))
        for name, capture, fast, workers, src in kinds:
            port = _free_port()
            (work / name).mkdir()
            proc_env = {k: v for k, v in env.items() if not k.startswith("LEARNLOOP_")}
            if src is not None:  # that tree's learnloop is imported first
                proc_env["PYTHONPATH"] = os.pathsep.join([str(src), proc_env.get("PYTHONPATH", "")])
            proc = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--serve-proxy",
                    "--port",
                    str(port),
                    "--upstream",
                    upstream,
                    "--data-dir",
                    str(work / name),
                    "--capture",
                    capture,
                    "--proxy-workers",
                    str(workers),
                    *(["--fast"] if fast else []),
                ],
                env=proc_env,
            )
            procs.append(proc)
            proxies[name] = f"http://127.0.0.1:{port}"
            pids[name] = proc.pid
        for url in proxies.values():
            _wait_up(f"{url}/v1/models")
        _settle(list(pids.values()))  # a second worker may still be starting when the first answers
        arms = {
            "direct": (f"{upstream}/v1/chat/completions", "rules-teacher", key),
            **{name: (f"{url}/v1/chat/completions", "learnloop", None) for name, url in proxies.items()},
        }
        pids["upstream"] = procs[0].pid
        load = os.getloadavg()[0]
        results: dict[tuple[int, str], dict[str, list[float]]] = {}
        cpu: dict[tuple[int, str], float] = {}
        for concurrency in (1, 50):
            n = per_arm if concurrency > 1 else max(20, per_arm // 2)
            before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
            for r in range(rounds):
                order = list(arms)
                order = order[r % len(order) :] + order[: r % len(order)]  # rotate: no arm always first
                for name, (lat, rps) in asyncio.run(_run(arms, n, concurrency, order)).items():
                    slot = results.setdefault((concurrency, name), {"lat": [], "rps": []})
                    slot["lat"] += lat
                    slot["rps"].append(rps)
            requests = rounds * (n + concurrency)
            for name, pid in pids.items():
                per = requests * (len(arms) if name == "upstream" else 1)  # the upstream serves every arm
                cpu[(concurrency, name)] = 1000 * (_cpu_seconds(pid) - before[name]) / per
        report(results, cpu, per_arm, rounds, load, os.getloadavg()[0])
        stored = _stored(work / "proxy+capture")
        print(f"\ncaptured by proxy+capture: {stored} teacher trajectories stored (SQLite)")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


def _stored(data_dir: Path) -> int:
    from sqlalchemy import func, select

    from learnloop.store.db import Database
    from learnloop.store.models import Trajectory

    db = Database(f"sqlite:///{data_dir / 'learnloop.db'}")
    try:
        with db.read_session() as s:
            return int(s.scalar(select(func.count()).select_from(Trajectory)) or 0)
    finally:
        db.dispose()


def _fast_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("uvloop", "httptools"))


def report(
    results: dict[tuple[int, str], dict[str, list[float]]],
    cpu: dict[tuple[int, str], float],
    per_arm: int,
    rounds: int,
    l0: float,
    l1: float,
) -> None:
    print(
        f"bench_gateway: streamed chat completions over loopback, {per_arm} requests per arm per round "
        f"(half at 1 stream), {rounds} round(s), arms interleaved; load average {l0:.1f} at start, "
        f"{l1:.1f} at end"
    )
    rows = []
    arms = [a for c, a in results if c == 1]
    for concurrency in (1, 50):
        direct = results[(concurrency, "direct")]
        d50, d99 = _pct(direct["lat"], 50) * 1000, _pct(direct["lat"], 99) * 1000
        drps = statistics.median(direct["rps"])
        print(
            f"\n{concurrency} concurrent stream(s); the upstream's CPU per request: "
            f"{cpu[(concurrency, 'upstream')]:.2f} ms"
        )
        print(
            f"  {'arm':22} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10} {'req/s':>8} "
            f"{'vs direct':>10} {'CPU ms/req':>11}"
        )
        for name in arms:
            r = results[(concurrency, name)]
            p50, p99 = _pct(r["lat"], 50) * 1000, _pct(r["lat"], 99) * 1000
            rps = statistics.median(r["rps"])
            added = " " * 21 if name == "direct" else f"{p50 - d50:+10.2f} {p99 - d99:+10.2f}"
            own = "" if name == "direct" else f"{cpu[(concurrency, name)]:11.2f}"
            print(f"  {name:22} {p50:8.2f} {p99:8.2f} {added} {rps:8.1f} {rps / drps:9.2f}x {own}")
            rows.append(
                {
                    "concurrency": concurrency,
                    "arm": name,
                    "p50_ms": round(p50, 3),
                    "p99_ms": round(p99, 3),
                    "added_p50_ms": None if name == "direct" else round(p50 - d50, 3),
                    "added_p99_ms": None if name == "direct" else round(p99 - d99, 3),
                    "requests_per_s": round(rps, 1),
                    "proxy_cpu_ms_per_request": None
                    if name == "direct"
                    else round(cpu[(concurrency, name)], 3),
                    "n": len(r["lat"]),
                }
            )
    print(
        "\ntargets: added p50 <= 2 ms and p99 <= 10 ms (TensorZero publishes p50 0.35 ms, p99 0.94 ms "
        "at 10,000 QPS; see the README for what differs)"
    )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
