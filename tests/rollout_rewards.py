"""Reward functions the rollout tests register the way an app does (``@reward``), named in configs
through ``scoring.reward_modules`` as this file's path (so a training subprocess imports it too).

``lower_gated`` can hold a rollout: with LEARNLOOP_TEST_GATE set to a folder, its
LEARNLOOP_TEST_GATE_AT-th call writes ``waiting`` there and waits for ``go`` (the kill and stop tests
interrupt the training process at that moment, mid-rollout)."""

from __future__ import annotations

import os
import string
import time
from pathlib import Path

from learnloop.scoring import reward
from learnloop.scoring.view import TrajectoryView

CALLS: list[TrajectoryView] = []
_GATE_CALLS = [0]


def _lower(text: str) -> float:
    """Share of a-z characters: a random tiny model starts near 0.5 and a LoRA can push it towards 1."""
    return sum(c in string.ascii_lowercase for c in text) / len(text) if text else 0.0


@reward("rt_lower", version="1")
def lower(t: TrajectoryView) -> float | None:
    CALLS.append(t)
    return _lower(t.completion)


@reward("rt_scenario_only", version="1")
def scenario_only(t: TrajectoryView) -> float | None:
    """Applies only to the 'orders' scenario, as the demo's verifier does."""
    return None if t.scenario != "orders" else _lower(t.completion)


@reward("rt_has_answer", version="1")
def has_answer(t: TrajectoryView) -> float | None:
    """1.0 when the completion contains the record's 'answer' (a key that reaches metadata)."""
    return float(str(t.metadata.get("answer", "\0")) in t.completion)


@reward("rt_lower_gated", version="1")
def lower_gated(t: TrajectoryView) -> float | None:
    gate = os.environ.get("LEARNLOOP_TEST_GATE")
    if gate:
        _GATE_CALLS[0] += 1
        if _GATE_CALLS[0] == int(os.environ["LEARNLOOP_TEST_GATE_AT"]):
            folder = Path(gate)
            (folder / "waiting").write_text(str(os.getpid()))
            deadline = time.monotonic() + 300
            while not (folder / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
    return _lower(t.completion)


@reward("rt_broken", version="1")
def broken(t: TrajectoryView) -> float | None:
    raise RuntimeError("verifier crashed")


@reward("rt_constant", version="1")
def constant(t: TrajectoryView) -> float | None:
    """The same for every answer: GRPO has nothing to compare (the loop must say so)."""
    return 0.5
