"""Reward functions the GRPO tests name as ``grpo.reward_fn``
('grpo_rewards:<name>'); tests/ is on sys.path."""

from __future__ import annotations

import string
from typing import Any

CALLS: list[tuple[list[dict[str, Any]], str, dict[str, Any]]] = []


def lowercase_fraction(prompt: list[dict[str, Any]], completion: str) -> float:
    """Share of the completion's characters that are a-z: a random tiny model starts near 0.5 and a
    LoRA can push it towards 1 within a few dozen steps, so the reward is learnable on CPU."""
    if not completion:
        return 0.0
    return sum(c in string.ascii_lowercase for c in completion) / len(completion)


def constant(prompt: list[dict[str, Any]], completion: str) -> float:
    return 1.0


def recording(prompt: list[dict[str, Any]], completion: str, **extras: Any) -> float:
    CALLS.append((prompt, completion, extras))
    return float(len(completion))


def wants_answer(prompt: list[dict[str, Any]], completion: str, answer: str) -> float:
    """Takes only ``answer``: other record keys must not be passed to it."""
    return float(answer in completion) + len(completion) / 100


def broken(prompt: list[dict[str, Any]], completion: str) -> float:
    raise RuntimeError("verifier crashed")


def not_a_number(prompt: list[dict[str, Any]], completion: str) -> Any:
    return "high"


NOT_CALLABLE = 3
