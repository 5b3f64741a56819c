"""Scoring: heuristic rewards, feedback signals, the LLM judge, combined rewards and statistics.

Extend the heuristics with a plain function::

    import learnloop.scoring as scoring

    @scoring.reward("polite", version="1")
    def polite(t: scoring.TrajectoryView) -> float | None:
        return 1.0 if "please" in t.completion.lower() else 0.0

Names are loaded on first use: a training process imports the user's reward modules (which import
``learnloop.scoring``) and must not pull in the store with them.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported now, not on first use: the function ``combine`` shares its name with its module, and a
# submodule imported later would otherwise be what ``learnloop.scoring.combine`` names.
from learnloop.scoring.combine import (
    CombineRule,
    combine,
    combine_scores,
    combined_rewards,
    latest_aspects,
    latest_scores,
)

_WHERE = {
    "learnloop.scoring.apply": (
        "ApplyReport",
        "HeuristicReport",
        "apply_heuristics",
        "apply_rewards",
        "score_views",
    ),
    "learnloop.scoring.feedback": ("FeedbackReport", "apply_feedback", "feedback_reward"),
    "learnloop.scoring.heuristics": ("register_schema", "tool_result_ok"),
    "learnloop.scoring.judge": (
        "JudgeClient",
        "JudgeError",
        "JudgeReport",
        "OpenAICompatibleClient",
        "judge_group",
        "judge_scenario",
    ),
    "learnloop.scoring.registry": (
        "RewardFunction",
        "load_modules",
        "register",
        "registered",
        "reward",
        "unregister",
    ),
    "learnloop.scoring.stats": ("reward_stats", "summarize"),
    "learnloop.scoring.trl_adapter": ("as_trl_reward",),
    "learnloop.scoring.view": ("TrajectoryView",),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = [
    "ApplyReport",
    "CombineRule",
    "FeedbackReport",
    "HeuristicReport",
    "JudgeClient",
    "JudgeError",
    "JudgeReport",
    "OpenAICompatibleClient",
    "RewardFunction",
    "TrajectoryView",
    "apply_feedback",
    "apply_heuristics",
    "apply_rewards",
    "as_trl_reward",
    "combine",
    "combine_scores",
    "combined_rewards",
    "feedback_reward",
    "judge_group",
    "judge_scenario",
    "latest_aspects",
    "latest_scores",
    "load_modules",
    "register",
    "register_schema",
    "registered",
    "reward",
    "reward_stats",
    "score_views",
    "summarize",
    "tool_result_ok",
    "unregister",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'learnloop.scoring' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
