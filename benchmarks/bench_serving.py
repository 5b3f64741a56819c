"""Serving benchmark: learnloop's LocalBackend on SmolLM2-135M with a LoRA adapter, measured against
what this machine can do and against its peers, all in one run.

    .venv/bin/python benchmarks/bench_serving.py              # ~15 min on a shared 2-core CPU
    .venv/bin/python benchmarks/bench_serving.py --quick      # smoke run (~5 min)
    .venv/bin/python benchmarks/bench_serving.py --json out.json --threads 1

1. The limit. A decode step reads every weight once whatever the batch, so at batch b it takes at
   least weight_bytes / bandwidth, and each token costs 2 x (matmul weights) FLOPs, so at most
   peak / flops_per_token tokens a second. The limit at batch b is the lower of
   b x bandwidth / weight_bytes and peak / flops_per_token, with the bandwidth of a large streaming
   read (``x.sum()`` over 1 GiB) and the peak of the best square matmul (MKL ``mm`` or oneDNN over a
   reordered weight), both measured here, for the configured threads (1 and all threads shown too).
2. Levers, one at a time: decode steps at batch 1 and 8 through each variant (transformers' forward
   as the engine used it before, the decoder with plain or reordered weights, LoRA unmerged or
   merged, bf16 weights), taking turns.
3. Arms: one stream against ``model.generate`` on the same weights; eight concurrent streams; an
   evaluation beside live requests (the requests' latency with and without it); hot swap; memory.
4. HTTP: ``learnloop serve`` against ``transformers serve`` (with and without
   ``--continuous-batching``), all servers up at once, arms taking turns.

Every rate is given per wall second and per CPU second of the measuring process (a shared machine
steals wall time from whoever runs; CPU seconds move less), and as a fraction of the limit. Needs the
prepared base model (`learnloop models prepare smollm2`) or `--model PATH` (an HF folder).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
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


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Clock:
    """Wall and CPU seconds (this process, every thread) of a block."""

    def __enter__(self) -> Clock:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


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


# -- 1. the limit ------------------------------------------------------------------------------------


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Fastest (wall, CPU) seconds of ``fn`` over ``repeats`` runs, after one warm-up."""
    fn()
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        with Clock() as c:
            fn()
        best_wall, best_cpu = min(best_wall, c.wall), min(best_cpu, c.cpu)
    return best_wall, best_cpu


def bandwidth(threads: int, gib: float) -> dict[str, float]:
    """GB/s of a streaming read (``sum`` over a tensor far larger than the caches)."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(int(gib * 2**30) // 4)
    wall, cpu = _best(x.sum, 5)
    return {"wall": x.numel() * 4 / wall / 1e9, "cpu": x.numel() * 4 * threads / cpu / 1e9}


def matmul_peak(threads: int, n: int = 2048) -> dict[str, float]:
    """GFLOP/s of the best square fp32 matmul torch has here: MKL's ``mm`` or oneDNN's over a weight
    reordered once (the kernel the decoder uses)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.rand(n, n), torch.rand(n, n)
    flops = 2 * n**3
    best = {"wall": 0.0, "cpu": 0.0}
    candidates = [lambda: a @ b]
    if torch.backends.mkldnn.is_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(b, n)
        candidates.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
    with torch.inference_mode():
        for fn in candidates:
            wall, cpu = _best(fn, 5)
            best["wall"] = max(best["wall"], flops / wall / 1e9)
            best["cpu"] = max(best["cpu"], flops * threads / cpu / 1e9)
    return best


def model_cost(model: Any) -> dict[str, float]:
    """Bytes a decode step reads (every weight once; an untied input embedding only by rows, so not
    counted) and FLOPs per token (2 per weight of every matmul, the output layer included)."""
    import torch

    embed = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight is embed
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    step_bytes = total - (0 if tied else embed.numel() * embed.element_size())
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return {"weight_bytes": float(step_bytes), "flops_per_token": float(2 * matmul)}


def measure_limit(model: Any, threads: int, quick: bool) -> dict[str, Any]:
    import torch

    all_threads = os.cpu_count() or 1
    gib = 0.5 if quick else 1.0
    bw = {t: bandwidth(t, gib) for t in sorted({1, threads, all_threads})}
    peak = {t: matmul_peak(t) for t in sorted({1, threads, all_threads})}
    torch.set_num_threads(threads)
    cost = model_cost(model)
    out: dict[str, Any] = {
        "threads": threads,
        "bandwidth_gb_s": {str(t): {k: round(v, 1) for k, v in b.items()} for t, b in bw.items()},
        "matmul_peak_gflop_s": {str(t): {k: round(v, 1) for k, v in p.items()} for t, p in peak.items()},
        "weight_mb": round(cost["weight_bytes"] / 1e6, 1),
        "mflop_per_token": round(cost["flops_per_token"] / 1e6, 1),
    }
    for clock in ("wall", "cpu"):
        for batch in (1, 8):
            by_bandwidth = batch * bw[threads][clock] * 1e9 / cost["weight_bytes"]
            by_compute = peak[threads][clock] * 1e9 / cost["flops_per_token"]
            key = f"batch{batch}" + ("" if clock == "wall" else "_per_cpu_s")
            out[key] = round(min(by_bandwidth, by_compute), 1)
            out[key + "_bound"] = "bandwidth" if by_bandwidth <= by_compute else "compute"
    return out


# -- 2. levers: decode steps one variant at a time ---------------------------------------------------


def step_levers(
    base: Path, adapter: Path, threads: int, rounds: int, limit: dict[str, Any]
) -> dict[str, Any]:
    """ms per decode step at batch 1 and 8 (100 tokens of context) for each variant, taking turns."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, DynamicCache

    from learnloop.serving.decoder import LlamaDecoder

    torch.set_num_threads(threads)
    fp32 = AutoModelForCausalLM.from_pretrained(base).eval()
    bf16 = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    context = 100
    decoders = {
        "plain": LlamaDecoder(fp32, slots=8, reorder=False),
        "reordered": LlamaDecoder(fp32, slots=8),
        "bf16": LlamaDecoder(bf16, slots=8),
    }
    for dec in decoders.values():
        dec.add_adapter("v1", adapter)

    def hf(model: Any, batch: int) -> Callable[[], Any]:
        cache = DynamicCache(config=fp32.config)
        ids = torch.randint(10, 1000, (batch, context))
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        last = torch.randint(10, 1000, (batch, 1))
        position = [context]

        def step() -> None:  # the cache grows as it does in serving; positions move on
            model(
                input_ids=last,
                position_ids=torch.full((batch, 1), position[0]),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            position[0] += 1

        return step

    def dec_step(dec: Any, batch: int, adapter_name: str | None, merged: bool) -> Callable[[], Any]:
        prompts = [list(range(10, 10 + context))] * batch
        dec.merge(None)
        dec.prefill(prompts, [adapter_name] * batch)
        tokens = torch.full((batch,), 11)
        positions = torch.full((batch,), context)

        def step() -> None:
            dec.merge(adapter_name if merged else None)  # a no-op once in that state
            dec.decode(tokens, positions, [adapter_name] * batch)

        return step

    variants: dict[str, Callable[[int], Callable[[], Any]]] = {
        "transformers forward + DynamicCache (before), base": lambda b: hf(fp32, b),
        "transformers forward + peft LoRA (before)": lambda b: hf(peft, b),
        "decoder, plain weights (MKL), base": lambda b: dec_step(decoders["plain"], b, None, False),
        "decoder, reordered weights (oneDNN), base": lambda b: dec_step(
            decoders["reordered"], b, None, False
        ),
        "decoder, reordered, LoRA unmerged": lambda b: dec_step(decoders["reordered"], b, "v1", False),
        "decoder, reordered, LoRA merged": lambda b: dec_step(decoders["reordered"], b, "v1", True),
        "decoder, bf16 weights, LoRA merged": lambda b: dec_step(decoders["bf16"], b, "v1", True),
    }
    times: dict[str, dict[int, list[tuple[float, float]]]] = {v: {1: [], 8: []} for v in variants}
    steps = 6
    with torch.inference_mode():
        for r in range(rounds):
            names = list(variants)
            names = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
            for batch in (1, 8):
                for name in names:
                    step = variants[name](batch)
                    step()
                    with Clock() as c:
                        for _ in range(steps):
                            step()
                    times[name][batch].append((c.wall / steps, c.cpu / steps))
    out: dict[str, Any] = {}
    dec = decoders["reordered"]
    dec.merge(None)
    with Clock() as merge:
        dec.merge("v1")
    with Clock() as unmerge:
        dec.merge(None)
    out["merge_ms"] = {"fold in": round(merge.wall * 1e3), "take out": round(unmerge.wall * 1e3)}
    for name, by_batch in times.items():
        row: dict[str, Any] = {}
        for batch, samples in by_batch.items():
            wall = sorted(s[0] for s in samples)[len(samples) // 2]
            cpu = sorted(s[1] for s in samples)[len(samples) // 2]
            row[f"b{batch}_ms"] = round(wall * 1e3, 1)
            row[f"b{batch}_cpu_ms"] = round(cpu * 1e3, 1)
            row[f"b{batch}_tok_s"] = round(batch / wall, 1)
            row[f"b{batch}_of_limit"] = round(batch / wall / limit[f"batch{batch}"], 3)
            row[f"b{batch}_of_limit_cpu"] = round(batch / cpu / limit[f"batch{batch}_per_cpu_s"], 3)
        out[name] = row
    return out


# -- 3. arms through the backend ---------------------------------------------------------------------


def raw_generate(model: Any, ids: Any, n: int) -> tuple[int, list[int]]:
    import torch

    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n)
    return out.shape[1] - ids.shape[1], out[0, ids.shape[1] :].tolist()


def backend_chat(backend: Any, model: str, n: int, messages: list = PROMPT) -> int:
    from learnloop.serving.backend import ChatRequest

    return backend.chat(model, ChatRequest(messages=messages, temperature=0, max_tokens=n))[
        0
    ].completion_tokens


def timed_stream(backend: Any, model: str, n: int, messages: list) -> dict[str, Any]:
    from learnloop.serving.backend import ChatRequest

    t0 = time.perf_counter()
    stamps = []
    for _ in backend.stream(model, ChatRequest(messages=messages, temperature=0, max_tokens=n)):
        stamps.append(time.perf_counter())
    return {
        "ttft": stamps[0] - t0 if stamps else float("nan"),
        "gaps": [b - a for a, b in zip(stamps, stamps[1:])],
    }


def rates(tokens: float, c: Clock) -> dict[str, float]:
    return {"tok_s": round(tokens / c.wall, 1), "tok_per_cpu_s": round(tokens / c.cpu, 1)}


def alternate(arms: dict[str, Callable[[], int]], rounds: int) -> dict[str, dict[str, float]]:
    """Tokens/s of each arm, the arms taking turns round by round, summed over the rounds."""
    tot = {name: [0.0, 0.0, 0.0] for name in arms}
    for r in range(rounds):
        names = list(arms)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            with Clock() as c:
                n = arms[name]()
            tot[name][0] += n
            tot[name][1] += c.wall
            tot[name][2] += c.cpu
    return {
        name: {"tokens": int(t[0]), "tok_s": round(t[0] / t[1], 1), "tok_per_cpu_s": round(t[0] / t[2], 1)}
        for name, t in tot.items()
    }


def concurrent_chats(backend: Any, model: str, clients: int, per_client: int, n: int) -> int:
    def client(i: int) -> int:
        return sum(
            backend_chat(backend, model, n, PROMPTS[(i + k) % len(PROMPTS)]) for k in range(per_client)
        )

    with cf.ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(client, range(clients)))


def greedy_agreement(backend: Any, reference: Any, model_name: str, n: int) -> dict[str, Any]:
    """How far greedy answers agree between a backend and ``model.generate`` (answers identical, and
    characters before the first difference in each)."""
    import torch

    from learnloop.serving.backend import ChatRequest

    same, prefix = 0, []
    for messages in PROMPTS:
        ids = torch.tensor([backend.prompt_ids(ChatRequest(messages=messages))])
        want = backend.tokenizer.decode(raw_generate(reference, ids, n)[1], skip_special_tokens=True)
        got = backend.chat(model_name, ChatRequest(messages=messages, temperature=0, max_tokens=n))[0].text
        same += got == want
        k = 0
        while k < min(len(got), len(want)) and got[k] == want[k]:
            k += 1
        prefix.append(f"{k}/{len(want)}")
    return {"identical_answers": f"{same}/{len(PROMPTS)}", "chars_before_first_difference": prefix}


def evaluation_beside_traffic(backend: Any, n: int, seconds: float) -> dict[str, Any]:
    """Request latency with and without an evaluation running beside it (background rows)."""
    from learnloop.serving.backend import ChatRequest

    shared = backend.background()
    stop = threading.Event()

    def app_traffic(latencies: list[float]) -> None:
        k = 0
        while not stop.is_set():
            with Clock() as c:
                backend_chat(backend, "v1", n // 2, PROMPTS[k % len(PROMPTS)])
            latencies.append(c.wall)
            k += 1

    def phase(with_eval: bool) -> dict[str, Any]:
        latencies: list[float] = []
        stop.clear()
        clients = [threading.Thread(target=app_traffic, args=(latencies,)) for _ in range(2)]
        for t in clients:
            t.start()
        eval_tokens = 0
        with Clock() as c:
            if with_eval:  # 32 held-out answers, 8 at a time, as the daemon's evaluation sends them
                req = [
                    ChatRequest(messages=PROMPTS[i % len(PROMPTS)], temperature=0, max_tokens=n)
                    for i in range(32)
                ]
                with cf.ThreadPoolExecutor(8) as pool:
                    eval_tokens = sum(
                        r[0].completion_tokens for r in pool.map(lambda q: shared.chat("v2", q), req)
                    )
            else:
                time.sleep(seconds)
        stop.set()
        for t in clients:
            t.join()
        return {
            "app_requests": len(latencies),
            "app_p50_ms": round(pct(latencies, 0.5) * 1e3),
            "app_p99_ms": round(pct(latencies, 0.99) * 1e3),
            **(
                {"eval_tokens": eval_tokens, "eval_s": round(c.wall, 1), **rates(eval_tokens, c)}
                if with_eval
                else {}
            ),
        }

    alone = phase(False)
    beside = phase(True)
    with Clock() as c:  # the same evaluation with no traffic beside it
        req = [
            ChatRequest(messages=PROMPTS[i % len(PROMPTS)], temperature=0, max_tokens=n) for i in range(32)
        ]
        with cf.ThreadPoolExecutor(8) as pool:
            tokens = sum(r[0].completion_tokens for r in pool.map(lambda q: shared.chat("v2", q), req))
    return {
        "app_alone": alone,
        "app_during_evaluation": beside,
        "evaluation_alone": {"tokens": tokens, **rates(tokens, c)},
    }


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


# -- 4. HTTP -------------------------------------------------------------------------------------------


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
    tf = str(Path(sys.executable).parent / "transformers")
    tf_args = [str(base), "--device", "cpu", "--dtype", "float32"]
    learnloop_env = {
        **env,
        "LEARNLOOP_DATA_DIR": str(tmp / "ll-data"),
        "LEARNLOOP_SERVING__THREADS": str(args.threads),
        "LEARNLOOP_SERVING__CAPTURE": "false",
    }
    ll_cmd = [
        sys.executable,
        "-m",
        "learnloop",
        "serve",
        "--model",
        str(base),
        "--no-watch-inbox",
        "--log-level",
        "warning",
    ]
    arms: dict[str, tuple[list[str], dict[str, str], str]] = {
        "learnloop serve": (ll_cmd, learnloop_env, "base"),
        # left alone, its paged cache sized itself past this machine's memory (OOM-killed at 13 GB)
        "transformers serve --continuous-batching": (
            [
                tf,
                "serve",
                *tf_args,
                "--continuous-batching",
                "--cb-num-blocks",
                "512",
                "--cb-block-size",
                "32",
            ],
            env,
            str(base),
        ),
    }
    if not args.quick:
        arms["transformers serve"] = ([tf, "serve", *tf_args], env, str(base))
    procs: dict[str, tuple[subprocess.Popen, str, str]] = {}
    try:
        for name, (cmd, arm_env, model) in arms.items():
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            try:
                procs[name] = (
                    start_server(
                        [*cmd, "--port", str(port)], url, arm_env, tmp / f"{name.replace(' ', '_')}.log"
                    ),
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
        for r in range(args.http_rounds):
            for c in (1, 8):
                names = list(procs)
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    _proc, url, model = procs[name]
                    if "error" in out.get(name, {}):
                        continue
                    try:
                        res = http_load(url, model, c, args.http_requests, args.tokens)
                        totals[name][c][0] += res["tokens"]
                        totals[name][c][1] += res["wall_s"]
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


# -- the run -----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="Prepared name or HF folder. [smollm2]")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared CPU). [1]"
    )
    ap.add_argument("--tokens", type=int, default=64, help="Completion tokens per request. [64]")
    ap.add_argument("--rounds", type=int, default=3, help="Rounds of every in-process comparison. [3]")
    ap.add_argument("--http-requests", type=int, default=1, help="Requests per HTTP client per round. [1]")
    ap.add_argument("--http-rounds", type=int, default=2, help="Rounds of the HTTP arms, taking turns. [2]")
    ap.add_argument("--no-servers", action="store_true", help="Skip the HTTP server comparison.")
    ap.add_argument("--servers-only", action="store_true", help="Only the limit and the HTTP comparison.")
    ap.add_argument("--quick", action="store_true", help="Smoke run: fewer tokens and rounds.")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    ap.add_argument("--memory-child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], args.memory_child[1:])
        return
    if args.quick:
        args.tokens, args.rounds, args.http_requests, args.http_rounds = 32, 1, 1, 1

    import torch
    from peft import PeftModel
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
        "load_average_at_start": load_average(),
    }
    print(
        f"base {base}, {args.threads} thread(s), {args.tokens} tokens a request; load {load_average()}",
        flush=True,
    )
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    limit = measure_limit(plain, args.threads, args.quick)
    torch.set_num_threads(args.threads)
    results["limit"] = limit
    print(
        f"limit: weights {limit['weight_mb']} MB, {limit['mflop_per_token']} MFLOP/token; bandwidth "
        f"{limit['bandwidth_gb_s']} GB/s; matmul peak {limit['matmul_peak_gflop_s']} GFLOP/s\n"
        f"  at {args.threads} thread(s): batch 1 {limit['batch1']} tok/s ({limit['batch1_bound']}-bound), "
        f"batch 8 {limit['batch8']} tok/s ({limit['batch8_bound']}-bound); per CPU second "
        f"{limit['batch1_per_cpu_s']} / {limit['batch8_per_cpu_s']}",
        flush=True,
    )
    if args.servers_only:
        results["servers"] = measure_servers(base, args, tmp)
        _report(results, args)
        return

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

    print("levers (decode steps, 100 tokens of context, variants taking turns):", flush=True)
    results["levers"] = step_levers(base, adapters[0], args.threads, args.rounds, limit)
    for name, row in results["levers"].items():
        if name == "merge_ms":
            print(f"  folding the adapter into the weights / taking it out: {row} ms", flush=True)
            continue
        print(
            f"  {name:52} b1 {row['b1_ms']:6.1f} ms ({row['b1_of_limit']:.0%} of limit)  "
            f"b8 {row['b8_ms']:6.1f} ms ({row['b8_of_limit']:.0%}; per CPU s {row['b8_of_limit_cpu']:.0%})",
            flush=True,
        )

    backend = LocalBackend(base, device="cpu", dtype="float32", max_batch_size=8, max_queued=256)
    backend.load_adapter("v1", adapters[0])
    lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapters[0]).eval()
    ids = torch.tensor([backend.prompt_ids(ChatRequest(messages=PROMPT))])
    n = args.tokens
    backend_chat(backend, "v1", 4)
    raw_generate(lora, ids, 4)  # warm-ups
    results["runner"] = backend.engine.runner_name
    per_client = 1 if args.quick else 2

    # single stream and eight streams on the adapter, against peft's generate on the same weights
    arms = alternate(
        {
            "generate (peft, same weights), 1 stream": lambda: raw_generate(lora, ids, n)[0],
            "learnloop LocalBackend, 1 stream": lambda: backend_chat(backend, "v1", n),
            # each client sends its next request when one ends: eight stay in flight, not a draining tail
            "learnloop LocalBackend, 8 streams": lambda: concurrent_chats(backend, "v1", 8, per_client, n),
        },
        args.rounds,
    )
    ll1, ll8 = arms["learnloop LocalBackend, 1 stream"], arms["learnloop LocalBackend, 8 streams"]
    gen = arms["generate (peft, same weights), 1 stream"]
    for name, row in arms.items():
        batch = 8 if "8 streams" in name else 1
        row["fraction_of_limit"] = round(row["tok_s"] / limit[f"batch{batch}"], 3)
        row["fraction_of_limit_per_cpu_s"] = round(row["tok_per_cpu_s"] / limit[f"batch{batch}_per_cpu_s"], 3)
    ll1["vs_generate"] = round(ll1["tok_s"] / gen["tok_s"], 3)
    ll1["vs_generate_per_cpu_s"] = round(ll1["tok_per_cpu_s"] / gen["tok_per_cpu_s"], 3)
    ll8["vs_1_stream"] = round(ll8["tok_s"] / ll1["tok_s"], 2)
    results["arms"] = arms
    results["fraction_of_limit"] = {"batch1": ll1["fraction_of_limit"], "batch8": ll8["fraction_of_limit"]}
    results["fraction_of_limit_per_cpu_s"] = {
        "batch1": ll1["fraction_of_limit_per_cpu_s"],
        "batch8": ll8["fraction_of_limit_per_cpu_s"],
    }
    for name, row in arms.items():
        print(
            f"{name:42} {row['tok_s']:6.1f} tok/s ({row['fraction_of_limit']:.0%} of limit), "
            f"{row['tok_per_cpu_s']:6.1f} per CPU s ({row['fraction_of_limit_per_cpu_s']:.0%})",
            flush=True,
        )
    print(
        f"1 stream vs generate: x{ll1['vs_generate']} (per CPU s x{ll1['vs_generate_per_cpu_s']})", flush=True
    )

    results["greedy_vs_generate"] = {
        "fp32 LoRA (merged after 64 steps alone)": greedy_agreement(backend, lora, "v1", n),
        "fp32 base": greedy_agreement(backend, plain, "base", n),
    }
    bf16 = LocalBackend(base, device="cpu", dtype="bfloat16", max_batch_size=8)
    bf16.load_adapter("v1", adapters[0])
    results["greedy_vs_generate"]["bf16 weights LoRA, against fp32 generate"] = greedy_agreement(
        bf16, lora, "v1", n
    )
    bf = alternate(
        {
            "fp32, 8 streams": lambda: concurrent_chats(backend, "v1", 8, per_client, n),
            "bf16, 8 streams": lambda: concurrent_chats(bf16, "v1", 8, per_client, n),
        },
        args.rounds,
    )
    bf["bf16_vs_fp32"] = round(bf["bf16, 8 streams"]["tok_s"] / bf["fp32, 8 streams"]["tok_s"], 2)
    results["lower_precision"] = bf
    bf16.close()
    print(f"greedy agreement: {json.dumps(results['greedy_vs_generate'])}", flush=True)
    print(f"bf16 weights, 8 streams: x{bf['bf16_vs_fp32']} fp32", flush=True)

    # an evaluation beside live requests: the requests' latency with and without it
    backend.load_adapter("v2", adapters[1])
    results["evaluation_beside_traffic"] = evaluation_beside_traffic(
        backend, n, seconds=20 if not args.quick else 8
    )
    ev = results["evaluation_beside_traffic"]
    alone, during = ev["app_alone"], ev["app_during_evaluation"]
    print(
        f"requests alone p50/p99 {alone['app_p50_ms']}/{alone['app_p99_ms']} ms; during an evaluation "
        f"{during['app_p50_ms']}/{during['app_p99_ms']} ms; the evaluation {during['tok_s']} tok/s beside "
        f"them, {ev['evaluation_alone']['tok_s']} alone",
        flush=True,
    )

    # hot swap: loading a new version while idle, and while 4 streams decode
    with Clock() as c:
        backend.load_adapter("v3", adapters[2])
    load_idle = c.wall
    with cf.ThreadPoolExecutor(5) as pool:
        streams = [pool.submit(timed_stream, backend, "v1", n, PROMPTS[i]) for i in range(4)]
        time.sleep(0.5)
        with Clock() as c:
            backend.load_adapter("v4", adapters[3])
        gaps = [g for s in streams for g in s.result()["gaps"]]
    results["hot_swap"] = {
        "load_idle_ms": round(load_idle * 1e3, 1),
        "load_while_decoding_ms": round(c.wall * 1e3, 1),
        "itl_p50_ms": round(pct(gaps, 0.5) * 1e3, 1),
        "itl_max_ms": round(max(gaps) * 1e3, 1) if gaps else None,
    }
    print(f"hot swap: {results['hot_swap']}", flush=True)
    backend.close()
    del plain

    if not args.no_servers:
        print("HTTP servers (same client, non-streaming, completion tokens from usage):", flush=True)
        results["servers"] = measure_servers(base, args, tmp)
        for name, row in results["servers"].items():
            print(f"  {name}: {json.dumps(row)}", flush=True)
    _report(results, args)


def _report(results: dict[str, Any], args: argparse.Namespace) -> None:
    results["load_average_at_end"] = load_average()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
