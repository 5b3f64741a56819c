"""Cost of the built-in heuristic rewards per trajectory (target: < 100 µs for all of them together).

Runs every built-in over a mix of 4,000 typical trajectories (prose answers, JSON answers with a
schema, tool-using agent runs, refusals), building a fresh TrajectoryView each time as
`rewards apply` does, and compares with a trivial reward function over the same views.

    .venv/bin/python benchmarks/bench_heuristics.py

Times are the best of 5 passes, per wall second and per CPU second of this process (the CPU
figure is the one to read on a loaded machine; the verdict uses it).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learnloop.config import ScoringSettings  # noqa: E402
from learnloop.scoring import registered  # noqa: E402
from learnloop.scoring.apply import score_views  # noqa: E402
from learnloop.scoring.registry import RewardFunction  # noqa: E402
from learnloop.scoring.view import TrajectoryView  # noqa: E402

SYSTEM = "You are a helpful assistant for ACME Corp. Answer concisely and accurately."
SCHEMA = {
    "type": "object",
    "required": ["city", "temperature", "conditions"],
    "properties": {
        "city": {"type": "string"},
        "temperature": {"type": "number"},
        "conditions": {"type": "string"},
    },
}
WORDS = (
    "the order was shipped on monday and should arrive within three business days please contact support"
).split()


def prose(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + "."


def make_trajectories(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 4
        msgs: list[dict] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": prose(rng, 20)},
        ]
        meta: dict = {}
        if kind == 0:  # a plain answer
            msgs.append({"role": "assistant", "content": prose(rng, rng.randint(40, 150))})
        elif kind == 1:  # structured output with a schema
            meta = {"json_schema": SCHEMA}
            answer = {"city": "Oslo", "temperature": rng.uniform(-10, 30), "conditions": prose(rng, 5)}
            msgs.append({"role": "assistant", "content": json.dumps(answer)})
        elif kind == 2:  # an agent with three tool calls, one failing
            for j in range(3):
                msgs.append(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": f"c{j}",
                                "type": "function",
                                "function": {"name": "lookup", "arguments": json.dumps({"q": j})},
                            }
                        ],
                    }
                )
                result = {"error": "timeout"} if j == 1 else {"rows": [prose(rng, 8) for _ in range(3)]}
                msgs.append({"role": "tool", "tool_call_id": f"c{j}", "content": json.dumps(result)})
            msgs.append({"role": "assistant", "content": prose(rng, 60)})
        else:  # a refusal
            msgs.append(
                {
                    "role": "assistant",
                    "content": "I'm sorry, but I can't help with that request. " + prose(rng, 10),
                }
            )
        out.append({"id": f"t{i}", "messages": msgs, "metadata": meta})
    return out


def run(
    functions: list[RewardFunction], data: list[dict], config: ScoringSettings, repeats: int
) -> tuple[float, int]:
    """Best µs per trajectory of CPU time (wall time in CPU_WALL[0], for the record)."""
    best = best_wall = float("inf")
    scored = 0
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        views = [TrajectoryView(d["id"], d["messages"], metadata=d["metadata"], config=config) for d in data]
        scores, _runs, report = score_views(functions, views)
        best, best_wall = min(best, time.process_time() - c0), min(best_wall, time.perf_counter() - t0)
        scored = len(scores)
        assert report.failed == 0, report.errors[:3]
    CPU_WALL[0] = best_wall / len(data) * 1e6
    return best / len(data) * 1e6, scored


CPU_WALL = [0.0]


def main() -> None:
    n, repeats = 4000, 5
    data = make_trajectories(n)
    config = ScoringSettings()
    builtins = registered()
    trivial = [RewardFunction("trivial", "1", lambda t: 1.0)]
    run(builtins, data[:200], config, 1)  # warm caches (schema validator, regexes)
    base_us, _ = run(trivial, data, config, repeats)
    all_us, scored = run(builtins, data, config, repeats)
    all_wall = CPU_WALL[0]
    print(f"trajectories: {n} (prose / JSON+schema / 3-tool agent / refusal), best of {repeats}")
    print(f"built-ins: {', '.join(f.name for f in builtins)} ({scored} scores per pass)")
    print(f"baseline (trivial function):  {base_us:8.2f} µs/trajectory (CPU)")
    print(f"all built-ins:                {all_us:8.2f} µs/trajectory (CPU), {all_wall:.2f} µs wall")
    print(f"ratio built-ins / trivial:    {all_us / base_us:8.2f}x")
    for fn in builtins:
        us, _ = run([fn], data, config, 3)
        print(f"  {fn.name:<14} {us - base_us:8.2f} µs/trajectory run alone, minus the baseline")
    verdict = "PASS" if all_us < 100 else "FAIL"
    print(
        f"{verdict}: {all_us:.1f} µs/trajectory of CPU time (target < 100 µs); "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    if "--no-store" not in sys.argv:
        store_apply(data)


def store_apply(data: list[dict]) -> None:
    """For context: `apply_heuristics` end to end on a SQLite file (load, score, write, bookkeeping)."""
    import tempfile

    from learnloop.scoring import apply_heuristics
    from learnloop.store import Database, ingest, parse_batch

    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{tmp}/bench.db")
        db.upgrade()
        with db.session() as s:
            ingest(s, parse_batch({"trajectories": data}))
        t0 = time.perf_counter()
        report = apply_heuristics(db)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        apply_heuristics(db)
        rerun = time.perf_counter() - t0
        db.dispose()
    n = len(data)
    print(
        f"store (SQLite) apply_heuristics: {first / n * 1e6:8.1f} µs/trajectory end to end "
        f"({report.scored} scores); no-op re-run {rerun * 1e3:.0f} ms for {n}"
    )


if __name__ == "__main__":
    main()
