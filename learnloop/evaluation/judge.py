"""Pairwise LLM judging, always in both orders: a verdict that flips with the order is a tie.

Judges favour the first (or second) answer shown; asking twice with the order swapped and
counting only agreeing verdicts removes that bias, and the share of agreeing pairs says how far
the judge can be trusted on this data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from learnloop.scoring.judge import JudgeClient, JudgeError
from learnloop.scoring.view import message_text

PROMPT_VERSION = "pairwise-1"
SYSTEM = (
    "You compare two answers an assistant could give to the same conversation. Judge which answer better "
    "serves the user: correct, helpful, follows the instructions and requested format, no needless refusal. "
    'Reply with JSON only: {"winner": "A"} or {"winner": "B"} or {"winner": "tie"}, optionally with "reason".'
)
_WINNER = re.compile(r'"winner"\s*:\s*"(A|B|tie)"', re.IGNORECASE)


def _render(messages: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(f"[{m.get('role')}] {message_text(m)}" for m in messages)


def _ask(client: JudgeClient, prompt: Sequence[Mapping[str, Any]], a: str, b: str, max_chars: int) -> str:
    user = (
        f"Conversation:\n{_render(prompt)}\n\n=== Answer A ===\n{a[:max_chars]}\n\n"
        f"=== Answer B ===\n{b[:max_chars]}\n\nWhich answer is better?"
    )
    text = client.complete([{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}])
    m = _WINNER.search(text)
    if m is None:
        stripped = text.strip().strip(".").strip('"').lower()
        if stripped in ("a", "b", "tie"):
            return stripped.upper() if stripped != "tie" else "tie"
        raise JudgeError(f"judge reply names no winner: {text[:200]!r}")
    w = m.group(1)
    return "tie" if w.lower() == "tie" else w.upper()


def judge_pair(
    client: JudgeClient,
    prompt: Sequence[Mapping[str, Any]],
    candidate: str,
    baseline: str,
    *,
    max_chars: int = 6000,
) -> dict[str, Any]:
    """Both orders. ``outcome`` for the candidate: 1 win, 0.5 tie (or flip), 0 loss;
    None when the judge failed."""
    try:
        first = _ask(client, prompt, candidate, baseline, max_chars)  # candidate is A
        second = _ask(client, prompt, baseline, candidate, max_chars)  # candidate is B
    except JudgeError as exc:
        return {"outcome": None, "error": str(exc)}
    as_cand = {"A": "candidate", "B": "baseline", "tie": "tie"}
    as_cand_swapped = {"A": "baseline", "B": "candidate", "tie": "tie"}
    v1, v2 = as_cand[first], as_cand_swapped[second]
    consistent = v1 == v2
    outcome = {"candidate": 1.0, "baseline": 0.0, "tie": 0.5}[v1] if consistent else 0.5
    return {"outcome": outcome, "consistent": consistent, "orders": [v1, v2]}


def judge_summary(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    done = [r for r in results if r.get("outcome") is not None]
    outcomes = [r["outcome"] for r in done]
    return {
        "n": len(done),
        "failed": len(results) - len(done),
        "wins": sum(o == 1.0 for o in outcomes),
        "ties": sum(o == 0.5 for o in outcomes),
        "losses": sum(o == 0.0 for o in outcomes),
        "consistency": (sum(bool(r.get("consistent")) for r in done) / len(done)) if done else None,
        "win_rate": (sum(outcomes) / len(outcomes)) if outcomes else None,
        "prompt_version": PROMPT_VERSION,
    }


__all__ = ["JudgeClient", "judge_pair", "judge_summary"]
