"""The typed ``[scoring]`` section: how rewards, feedback and the LLM judge score trajectories, and
how their aspects become one reward. Its own module so a training config (``rollout.scoring``) can
type its copy of these settings without importing ``Settings``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator

from learnloop.config.base import ConfigModel


class FeedbackWeights(ConfigModel):
    rating: float = Field(1.0, ge=0, description="Weight of the (normalised) rating in the feedback reward.")
    thumbs: float = Field(1.0, ge=0, description="Weight of thumbs up/down.")
    success: float = Field(1.0, ge=0, description="Weight of task success/failure.")
    correction: float = Field(
        1.0,
        ge=0,
        description="Weight of the correction penalty: a corrected answer counts as the worst value.",
    )


class CombineSettings(ConfigModel):
    """How many scores become one reward. See learnloop/scoring/combine.py for the rule."""

    mode: Literal["explicit_first", "mean"] = Field(
        "explicit_first",
        description="'explicit_first': explicit signals decide, generic heuristics refine, "
        "checks only lower; 'mean': plain weighted mean of all aspects.",
    )
    explicit_sources: list[Literal["env", "human", "judge"]] = Field(
        default_factory=lambda: ["env", "human", "judge"],
        description="Score sources that are the app's own signal (a registered verifier counts too: "
        "any heuristic not listed below).",
    )
    generic: list[str] = Field(
        default_factory=lambda: ["length", "no_refusal"],
        description="Heuristics that only refine an explicit reward (or stand in when there is none).",
    )
    checks: list[str] = Field(
        default_factory=lambda: ["json_valid", "json_schema", "tool_success"],
        description="Heuristics that can only lower the reward: the reward is capped at their value.",
    )
    generic_share: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="How far generic heuristics may move an explicit reward toward "
        "their own mean (0: not at all).",
    )


class ScoringSettings(ConfigModel):
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="Weight per score aspect in the combined reward (missing aspects weigh 1.0).",
    )
    # Heuristics
    reward_modules: list[str] = Field(
        default_factory=list,
        description="Modules (dotted names or .py paths) imported before `rewards apply` so "
        "their @reward functions register.",
    )
    json_schemas: dict[str, str | dict[str, Any]] = Field(
        default_factory=dict,
        description="Named JSON schemas (a path to a .json file, or the schema inline) that trajectories "
        "name with metadata 'schema' or a tag 'schema:NAME'.",
    )
    length_target_chars: int = Field(
        2000,
        ge=1,
        description="Final answers up to this many characters get length score "
        "1.0; it falls to 0 at twice it.",
    )
    # Feedback
    rating_min: float = Field(1.0, description="Lowest value on the rating scale apps send.")
    rating_max: float = Field(5.0, description="Highest value on the rating scale apps send.")
    feedback_range: Literal["signed", "unit"] = Field(
        "signed", description="Feedback reward range: 'signed' is [-1, 1], 'unit' is [0, 1]."
    )
    feedback_weights: FeedbackWeights = Field(default_factory=FeedbackWeights)
    # LLM judge
    judge_base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint of the LLM judge (e.g. http://host:8000/v1)."
    )
    judge_model: str | None = Field(None, description="Model name the judge requests.")
    judge_api_key: SecretStr | None = Field(None, description="API key for the judge endpoint.")
    judge_timeout: float = Field(60.0, gt=0, description="Seconds before a judge request is abandoned.")
    judge_max_attempts: int = Field(
        3,
        ge=1,
        le=20,
        description="Tries per group (HTTP errors, timeouts, bad output) before it is marked failed.",
    )
    judge_retry_backoff: float = Field(
        1.0, ge=0, description="Seconds before the first retry; doubles after each."
    )
    judge_concurrency: int = Field(4, ge=1, le=64, description="Groups sent to the judge at the same time.")
    judge_group_size: int = Field(
        8, ge=1, le=64, description="Most candidates judged together in one request."
    )
    judge_min_group_size: int = Field(
        2, ge=1, description="Groups smaller than this are not judged (nothing to compare)."
    )
    judge_criteria: str | None = Field(
        None,
        description="What the judge rates (replaces the default rubric; changing it re-judges everything).",
    )
    judge_max_candidate_chars: int = Field(
        6000, ge=200, description="Each candidate is cut to this many characters in the prompt."
    )
    judge_temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature of the judge.")
    judge_json_mode: bool = Field(
        False,
        description="Send response_format={'type': 'json_object'} (only for endpoints that support it).",
    )
    # Refinement: a user asking again for what they just asked means the answer before missed.
    refinement_threshold: float = Field(
        0.6,
        gt=0.0,
        le=1.0,
        description="Similarity (content words shared, 0-1) at which a user message counts as "
        "re-asking the previous request.",
    )
    refinement_weight: float = Field(
        0.5,
        ge=0.0,
        description="How much a 'refinement' score (-1 when re-asked) lowers the "
        "combined reward; 0 ignores it.",
    )
    combine: CombineSettings = Field(default_factory=CombineSettings)

    @model_validator(mode="after")
    def _rating_scale(self) -> ScoringSettings:
        if self.rating_max <= self.rating_min:
            raise ValueError(
                f"rating_max ({self.rating_max}) must be greater than rating_min ({self.rating_min})"
            )
        return self
