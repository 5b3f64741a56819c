"""What a loop's next cycle would run: its algorithm, dataset kind, examples and optimizer steps, and
the floor of steps below which a cycle is not worth starting; plus the gate's minimum of held-out
examples, so the readiness checks never start a cycle whose gate cannot decide.

The step count is the training loop's own formula (``train.max_steps``, else ``ceil(epochs x
batches / grad_accum)``, one batch being ``batch_size`` examples, prompts or groups), computed from the
example count the tally gives, before any data is built.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from learnloop.config import GatePolicy, Settings
from learnloop.config.loops import LoopConfig
from learnloop.config.training import ALGORITHM_DEFAULTS, TrainConfig


@dataclass
class CyclePlan:
    algorithm: str  # the loop's (grpo-on-policy, rft, ...)
    trains: str  # the training algorithm it runs
    dataset_kind: str
    examples: int
    unit: str  # what one example is: traces, pairs, groups, prompts, labelled answers
    steps: int
    min_steps: int  # 0: no floor
    steps_from: str  # "max_steps" (the loop fixed them) or "data"
    batch: int  # examples per optimizer step
    learning_rate: float

    @property
    def too_small(self) -> bool:
        return self.steps_from == "data" and self.steps < self.min_steps

    def examples_needed(self) -> int:
        """Examples a data-sized cycle needs to reach the floor."""
        if not self.min_steps:
            return 0
        return self.batch * self.min_steps

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _train_value(loop: LoopConfig, key: str) -> Any:
    return loop.train.get(key, TrainConfig.model_fields[key].default)


def plan(loop: LoopConfig, examples: int, unit: str = "examples") -> CyclePlan:
    """What a cycle of ``loop`` over ``examples`` examples would train."""
    trains = loop.train_algorithm
    defaults = ALGORITHM_DEFAULTS[trains]
    batch = int(_train_value(loop, "batch_size")) * int(_train_value(loop, "grad_accum"))
    max_steps = loop.train.get("max_steps")
    if max_steps:
        steps, source = int(max_steps), "max_steps"
    else:
        epochs = float(_train_value(loop, "epochs"))
        batches = math.ceil(examples / int(_train_value(loop, "batch_size"))) if examples else 0
        steps = math.ceil(epochs * batches / int(_train_value(loop, "grad_accum"))) if batches else 0
        source = "data"
    floor = defaults.min_steps if loop.min_steps is None else loop.min_steps
    return CyclePlan(
        algorithm=loop.algorithm,
        trains=trains,
        dataset_kind=loop.dataset_kind,
        examples=examples,
        unit=unit,
        steps=steps,
        min_steps=floor,
        steps_from=source,
        batch=batch,
        learning_rate=float(loop.train.get("learning_rate") or defaults.learning_rate),
    )


def describe(p: CyclePlan) -> str:
    """One line for ``loops status``: what the next cycle would do."""
    how = "train.max_steps" if p.steps_from == "max_steps" else f"{p.batch} per step"
    trains = p.algorithm if p.trains == p.algorithm else f"{p.algorithm} ({p.trains} over rollouts)"
    floor = f", floor {p.min_steps}" if p.min_steps and p.steps_from == "data" else ""
    return (
        f"{trains} on {p.examples} {p.unit}: {p.steps} optimizer steps "
        f"({how}{floor}), learning rate {p.learning_rate:g}"
    )


def gate_policy(settings: Settings, loop: LoopConfig) -> GatePolicy:
    """The gate a version of ``loop`` faces: ``[gate]`` overridden by the loop's ``gate = {...}`` (the
    evaluation stage's ``policy_for``, read here from the config alone)."""
    if not loop.gate:
        return settings.gate
    return GatePolicy(**{**settings.gate.model_dump(), **loop.gate})


def holdout_needed(settings: Settings, loop: LoopConfig, gated: bool = True) -> tuple[int, int]:
    """(held-out examples a cycle needs first, the gate's share of that): the gate's minimum, or the
    loop's ``min_holdout`` when higher; an explicit ``min_holdout = 0`` waits for none."""
    wanted = loop.triggers.min_holdout
    if wanted == 0:
        return 0, 0
    gate_min = gate_policy(settings, loop).min_examples if gated else 0
    return max(wanted or 0, gate_min), gate_min


def rollout_scoring(settings: Settings) -> dict[str, Any]:
    """``[scoring]`` as a rollout's training config carries it: no API key (the training process reads
    LEARNLOOP_SCORING__JUDGE_API_KEY from the daemon's environment), reward module files made absolute
    (the training process may start elsewhere)."""
    data = settings.scoring.model_dump(mode="json", exclude={"judge_api_key"})
    data["reward_modules"] = [
        str(Path(m).expanduser().resolve()) if (m.endswith(".py") or "/" in m) else m
        for m in data.get("reward_modules") or []
    ]
    return data
