"""Use learnloop reward functions as TRL reward functions (e.g. GRPO online rewards).

TRL calls ``reward_func(prompts=..., completions=..., completion_ids=..., **dataset_columns)``
and accepts None for "not applicable" (it becomes NaN and is left out of the mean).

These are the same registered ``@reward`` functions learnloop's own rollouts score samples with
(``learnloop.training.rollout``): one notion of reward function, whichever trainer runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from learnloop.config import ScoringSettings
from learnloop.scoring.registry import RewardFn, RewardFunction, get
from learnloop.scoring.view import TrajectoryView


def as_trl_reward(
    fn: RewardFunction | RewardFn | str, config: ScoringSettings | None = None
) -> Callable[..., list[float | None]]:
    """Wrap a reward function (or a registered name) in TRL's batch signature.

    Prompts and completions may be plain strings or conversational message lists. Dataset
    columns named ``scenario``, ``metadata`` and ``tags`` (one entry per sample) reach the view.
    """
    if isinstance(fn, str):
        fn = get([fn])[0]
    name = fn.name if isinstance(fn, RewardFunction) else getattr(fn, "__name__", "reward")
    config = config or ScoringSettings()

    def reward_func(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        metadata = kwargs.get("metadata") or [None] * len(completions)
        tags = kwargs.get("tags") or [None] * len(completions)
        scenarios = kwargs.get("scenario") or [None] * len(completions)
        out: list[float | None] = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            messages = [*_as_messages(prompt, "user"), *_as_messages(completion, "assistant")]
            meta = metadata[i] if isinstance(metadata[i], Mapping) else {}
            view = TrajectoryView(
                id=str(i),
                messages=messages,
                scenario=scenarios[i],
                metadata=meta,
                tags=tags[i] or (),
                config=config,
            )
            value = fn(view)
            out.append(None if value is None else float(value))
        return out

    reward_func.__name__ = name  # TRL logs rewards under the function's name
    return reward_func


def _as_messages(value: Any, role: str) -> list[Mapping[str, Any]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return list(value)
