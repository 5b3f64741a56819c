"""Scoring: heuristic rewards, feedback signals, the LLM judge, combined rewards and statistics.

Extend the heuristics with a plain function::

    import learnloop.scoring as scoring

    @scoring.reward("polite", version="1")
    def polite(t: scoring.TrajectoryView) -> float | None:
        return 1.0 if "please" in t.completion.lower() else 0.0
"""

from learnloop.scoring.apply import ApplyReport, HeuristicReport, apply_heuristics, apply_rewards, score_views
from learnloop.scoring.combine import (
    CombineRule,
    combine,
    combine_scores,
    combined_rewards,
    latest_aspects,
    latest_scores,
)
from learnloop.scoring.feedback import FeedbackReport, apply_feedback, feedback_reward
from learnloop.scoring.heuristics import register_schema, tool_result_ok
from learnloop.scoring.judge import (
    JudgeClient,
    JudgeError,
    JudgeReport,
    OpenAICompatibleClient,
    judge_group,
    judge_scenario,
)
from learnloop.scoring.registry import RewardFunction, load_modules, register, registered, reward, unregister
from learnloop.scoring.stats import reward_stats, summarize
from learnloop.scoring.trl_adapter import as_trl_reward
from learnloop.scoring.view import TrajectoryView

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
