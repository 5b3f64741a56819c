"""A verifier with partial credit for the format, registered as an app would register its own
(``scoring.reward_modules = ["benchmarks/no_teacher_rewards.py"]``), for bench_no_teacher.py's
``--reward lenient`` arms.

The demo's verifier (``order_json``) scores only a completion that is one JSON object and nothing
else: a base SmolLM2 that writes ``JSON:\\n{...}`` and keeps talking scores 0 on every sample, so
GRPO and RFT have nothing to learn from. This one finds the first JSON object anywhere in the answer.
"""

from __future__ import annotations

import json

from learnloop.demo.task import SCENARIO, check, expected_from_message
from learnloop.scoring import reward
from learnloop.scoring.view import TrajectoryView, message_text


@reward("order_json_lenient", version="1")
def order_json_lenient(t: TrajectoryView) -> float | None:
    """1.0 exact (the demo's verifier); else 0.1 for a JSON object anywhere in the answer, + 0.3 x the
    share of fields right, + 0.1 when the object is all the answer is (at most 0.5)."""
    if t.scenario != SCENARIO or t.final_message is None:
        return None
    users = [m for m in t.prompt if m.get("role") == "user"]
    if not users:
        return None
    message = message_text(users[-1])
    if check(message, t.completion) == 1.0:
        return 1.0
    expected = expected_from_message(message) or {}
    text = t.completion.strip()
    start = text.find("{")
    if start < 0:
        return 0.0
    try:
        value, end = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError:
        return 0.0
    if not isinstance(value, dict):
        return 0.0
    right = sum(1 for k, v in expected.items() if value.get(k) == v) / max(1, len(expected))
    alone = start == 0 and end == len(text)
    return 0.1 + 0.3 * right + (0.1 if alone else 0.0)
