"""What the nesting limit costs: validating ingest batches with and without the depth rule.

Every record that comes in (HTTP, the SDK's in-process transport, JSONL import, the inbox) is
walked by ``learnloop.store.records._within_depth``. This validates the same batch bodies the way
the API does (``BATCH.validate_json``), alternating the real rule with a no-op in one process,
and prints the CPU time per record of each arm and their ratio, for three record shapes: a
three-message chat, a 12-step agent with tool calls, and an 80-message conversation.

    .venv/bin/python benchmarks/bench_validation.py            # 9 rounds of 200 batches per arm
    .venv/bin/python benchmarks/bench_validation.py --quick

run.sh --quick: --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import learnloop.store.records as records


def _chat() -> dict[str, Any]:
    return {
        "scenario": "support",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there, how do I reset my password? " * 3},
            {"role": "assistant", "content": "Open settings, then security, then reset. " * 3},
        ],
        "metadata": {"user": "u-7", "confidence": 0.9},
        "tags": ["web"],
    }


def _agent() -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "find the cheapest flight"}]
    for i in range(12):
        messages.append(
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": f"c{i}",
                        "type": "function",
                        "function": {"name": "search", "arguments": '{"q": 1}'},
                    }
                ],
            }
        )
        messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": "result " * 20})
    return {
        "scenario": "agent",
        "messages": messages,
        "tools": [{"type": "function", "function": {"name": "search"}}],
    }


def _long() -> dict[str, Any]:
    return {
        "scenario": "long",
        "messages": [
            {"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 40} for i in range(80)
        ],
    }


SHAPES = {"3-message chat": _chat, "12-step agent": _agent, "80-message chat": _long}


def _body(shape: str, start: int, n: int) -> bytes:
    make = SHAPES[shape]
    return json.dumps({"trajectories": [{**make(), "id": f"t{start + i}"} for i in range(n)]}).encode()


def _arm(bodies: list[bytes]) -> float:
    started = time.process_time()
    for body in bodies:
        records.BATCH.validate_json(body)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batches", type=int, default=200, help="batches of 100 records per arm and round")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 20 batches")
    args = parser.parse_args()
    rounds, batches = (3, 20) if args.quick else (args.rounds, args.batches)
    real = records.too_deep
    print(f"{'shape':18} {'with rule µs/rec':>17} {'without µs/rec':>15} {'ratio':>6}")
    for shape in SHAPES:
        bodies = [_body(shape, i * 100, 100) for i in range(batches)]
        with_rule, without = [], []
        for _ in range(rounds):
            for arm in ("with", "without"):
                records.too_deep = real if arm == "with" else (lambda value, limit=records.MAX_DEPTH: None)
                seconds = _arm(bodies)
                (with_rule if arm == "with" else without).append(seconds / (batches * 100) * 1e6)
        records.too_deep = real
        a, b = statistics.median(with_rule), statistics.median(without)
        print(f"{shape:18} {a:17.1f} {b:15.1f} {a / b:6.2f}")


if __name__ == "__main__":
    main()
