"""The contract between the training loop and a training algorithm (SFT, DPO, GRPO, RFT, KTO).

The loop owns everything an algorithm should not care about: model loading, LoRA, the
optimizer and scheduler, length-grouped batching, gradient accumulation, checkpoints, the
control hook and progress. An algorithm (an ``Objective``) owns how its JSONL records become
tensors and how a batch of them becomes a loss. Objectives register themselves by name so the
loop can look one up from ``TrainConfig.algorithm``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from learnloop.training.config import TrainConfig


@dataclass
class Example:
    """One tokenized training record. ``length`` (tokens) drives length-grouped batching."""

    length: int
    data: dict[str, Any]


@dataclass
class StepOutput:
    """What one micro-batch produced. ``loss`` is already averaged so that ``loss.backward()`` is right."""

    loss: torch.Tensor
    tokens: int
    metrics: dict[str, float] = field(default_factory=dict)


class Objective(Protocol):
    name: str

    def prepare(self, record: dict[str, Any], line: int) -> Example | None:
        """Tokenize one JSONL record; raise ``learnloop.errors.ValidationFailed`` naming ``line`` and the
        field when it is malformed; return None to skip a record the algorithm cannot use (e.g. a
        GRPO group whose rewards are all equal)."""
        ...

    def collate(self, examples: list[Example]) -> dict[str, Any]:
        """Pad a micro-batch of prepared examples into tensors (on the CPU; the loop moves them)."""
        ...

    def compute(self, model: Any, batch: dict[str, Any]) -> StepOutput:
        """Forward pass (and, for online GRPO, sampling) for one micro-batch on the model's device."""
        ...


# Optional: an objective that keeps counts across steps (rollouts count prompts without a learning
# signal) has ``state_dict() -> dict`` (JSON) and ``load_state_dict(dict)``; the loop saves the state in
# every checkpoint and restores it on resume.


ObjectiveFactory = Callable[["TrainConfig", Any], Objective]  # (config, tokenizer) -> Objective

_REGISTRY: dict[str, ObjectiveFactory] = {}
# Modules that register the built-in objectives when imported.
_BUILTIN_MODULES = {
    "sft": "learnloop.training.sft",
    "dpo": "learnloop.training.dpo",
    "grpo": "learnloop.training.grpo",
    "rft": "learnloop.training.rft",
    "kto": "learnloop.training.kto",
}


def register_objective(name: str) -> Callable[[ObjectiveFactory], ObjectiveFactory]:
    def wrap(factory: ObjectiveFactory) -> ObjectiveFactory:
        _REGISTRY[name] = factory
        return factory

    return wrap


def get_objective(name: str, config: TrainConfig, tokenizer: Any) -> Objective:
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        from learnloop.errors import ValidationFailed

        raise ValidationFailed(
            f"Unknown training algorithm {name!r}; choose one of "
            f"{sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))}."
        )
    return _REGISTRY[name](config, tokenizer)
