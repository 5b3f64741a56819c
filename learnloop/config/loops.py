"""The typed ``[[loops]]`` and ``[daemon]`` sections of learnloop.toml (the daemon acts on them)."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from learnloop.config.base import ConfigModel
from learnloop.config.training import TrainConfig

if TYPE_CHECKING:
    from learnloop.config import Settings

LoopAlgorithm = Literal["sft", "dpo", "grpo", "grpo-on-policy", "rft", "kto"]
# What each loop algorithm trains with, and the dataset kind its cycles build from the selection.
TRAIN_ALGORITHM: dict[str, str] = {"grpo-on-policy": "grpo"}
DATASET_KIND: dict[str, str] = {"grpo-on-policy": "prompts", "rft": "prompts"}
# Loop algorithms whose policy answers the prompts itself, scored by the loop's rewards.
ROLLOUT_LOOPS = ("grpo-on-policy", "rft")

PRIORITIES: dict[str, int] = {"high": 10, "normal": 100, "low": 1000}
Priority = Literal["high", "normal", "low"]
# TrainConfig fields a loop fills in itself, per cycle.
_PER_CYCLE = ("algorithm", "base_model", "dataset", "output_dir", "init_adapter", "keep_optimizer_state")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``"90"``, ``"30m"``, ``"6h"``, ``"1d"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT[m.group(2)]
    raise ValueError(f"{value!r} is not a duration; use seconds or a string like '30m', '6h', '1d'")


class TriggerConfig(ConfigModel):
    min_new_examples: int = Field(
        100,
        ge=1,
        description="New eligible examples (traces, pairs or groups) since the last cycle that start one.",
    )
    check_interval: float = Field(
        1800.0, gt=0, description="Seconds (or '30m') between checks of this loop's triggers."
    )
    max_interval: float | None = Field(
        None,
        gt=0,
        description="Train anyway after this long since the last cycle when any new example exists.",
    )
    daily_at: str | None = Field(
        None, description="'HH:MM' (UTC): train once a day at this time when any new example exists."
    )
    reward_drop: float | None = Field(
        None,
        gt=0,
        description="Train when the served version's mean reward falls this far below its evaluated level.",
    )
    reward_window_hours: float = Field(
        24.0, gt=0, description="Window of served traffic the reward drop looks at."
    )
    reward_min_samples: int = Field(
        20, ge=1, description="Least scored served trajectories before a reward drop counts."
    )
    min_holdout: int | None = Field(
        None,
        ge=0,
        description="Least held-out trajectories of this loop's selection before it may train (unset: the "
        "gate's min_examples, so no cycle starts whose gate cannot decide; a number below that is raised to "
        "it; 0: train without waiting for held-out examples, the version then stays unevaluated).",
    )
    min_group_size: int | None = Field(
        None, ge=2, description="DPO/GRPO: least members of a group (defaults to the dataset's)."
    )
    backoff: float | None = Field(
        3600.0,
        gt=0,
        description="After a cycle that improved nothing (the gate found no improvement, or the rewards "
        "never varied), or while the served version sits at its evaluated ceiling, wait this long (or '1h') "
        "before the next cycle, doubling after each such cycle in a row; a reward drop, a new scenario in "
        "the traffic or `learnloop loops run` wakes the loop (unset: no backoff).",
    )
    backoff_max: float = Field(86400.0, gt=0, description="Longest backoff wait, in seconds (or '1d').")
    ceiling: float | None = Field(
        0.99,
        description="An evaluated mean reward at or above this is the ceiling: while the served version's "
        "live reward stays there too, the loop backs off (unset: never).",
    )
    min_free_disk_mb: int = Field(1024, ge=0, description="Least free space in the data dir, in MiB.")
    max_epochs: float | None = Field(
        10.0,
        gt=0,
        description="Readiness: when train.max_steps fixes a cycle's length, wait until its new examples "
        "are enough for at most this many passes over them (80 steps of 4 over 7 examples would be 40 "
        "passes: memorising, not learning). Unset: no such check.",
    )
    custom: list[str] = Field(
        default_factory=list,
        description="Names of triggers registered with @learnloop.daemon.trigger (in [daemon] "
        "trigger_modules) that may also start this loop's cycles.",
    )
    custom_checks: list[str] = Field(
        default_factory=list,
        description="Names of readiness checks registered with @learnloop.daemon.readiness_check "
        "(in [daemon] trigger_modules) that must also pass before a cycle.",
    )

    @field_validator("check_interval", "max_interval", "backoff", "backoff_max", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)

    @field_validator("daily_at")
    @classmethod
    def _daily(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", v):
            raise ValueError(f"{v!r} is not a time of day; use 'HH:MM' (24 h, UTC)")
        return v


class LoopConfig(ConfigModel):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Unique name (jobs, versions and events carry it).",
    )
    algorithm: LoopAlgorithm = Field(
        "sft",
        description="What the loop trains: sft (traces), dpo (pairs from groups or corrections), grpo "
        "(stored groups with rewards), grpo-on-policy (the policy answers served prompts several times, "
        "scored by `rewards` and/or the group judge), rft (keep the samples that pass `rewards`, train "
        "SFT on them) or kto (unpaired good/bad answers from feedback and scores).",
    )
    rewards: list[str] = Field(
        default_factory=list,
        description="grpo-on-policy, rft: names of @reward functions (registered by [scoring] "
        "reward_modules) that score the policy's samples.",
    )
    judge: bool = Field(
        False,
        description="grpo-on-policy, rft: also rank each prompt's samples with the group judge "
        "([scoring] judge_*; its API key comes from the daemon's environment).",
    )
    min_steps: int | None = Field(
        None,
        ge=0,
        description="Fewest optimizer steps worth a cycle; fewer and the loop waits for more data "
        "(unset: the algorithm's floor, ALGORITHM_DEFAULTS; 0: no floor). Not applied when train.max_steps "
        "is set.",
    )
    scenario: str | None = Field(None, description="Learn only from trajectories of this scenario.")
    sources: list[Literal["production", "teacher", "synthetic", "served"]] = Field(
        default_factory=list, description="Learn only from these sources (empty: all)."
    )
    tags: list[str] = Field(
        default_factory=list, description="Learn only from trajectories carrying all these tags."
    )
    dataset: dict[str, Any] = Field(
        default_factory=dict,
        description="Further dataset options as `learnloop datasets build` takes them "
        "(min_reward, min_margin, group_by ...).",
    )
    base_model: str | None = Field(None, description="Base model (default: [training] base_model).")
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="Training settings: any TrainConfig field (lora, max_steps, "
        "learning_rate, max_length ...).",
    )
    triggers: TriggerConfig = Field(
        default_factory=TriggerConfig, description="When a cycle starts, and what must be ready first."
    )
    incremental: bool = Field(
        True,
        description="Each cycle trains on the examples new since the previous one (continuing its adapter).",
    )
    max_truncated_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Refuse a cycle when more than this share of its examples exceed max_length.",
    )
    auto_promote: bool = Field(True, description="Promote a version that passes the gate without a person.")
    alias: str = Field("learnloop", description="The served name a promotion moves.")
    gate: dict[str, Any] = Field(
        default_factory=dict, description="Promotion gate policy (the evaluation stage's GatePolicy fields)."
    )
    canary: dict[str, Any] = Field(
        default_factory=dict,
        description="How this loop's versions take traffic from a teacher upstream ([canary] fields to "
        "override).",
    )
    eval_limit: int | None = Field(
        None, ge=1, description="Most held-out examples an evaluation generates for."
    )
    priority: Priority = Field(
        "normal", description="Queue priority of this loop's cycles: high, normal or low."
    )
    max_attempts: int = Field(
        3, ge=1, le=20, description="Tries of one cycle (crashes, OOM, stalls) before it fails."
    )
    enabled: bool = Field(
        True, description="Whether the daemon checks this loop's triggers (`loops run` works either way)."
    )

    @model_validator(mode="after")
    def _check(self) -> LoopConfig:
        bad = [k for k in self.train if k in _PER_CYCLE]
        if bad:
            raise ValueError(
                f"train.{bad[0]} is set by the loop itself (use the loop's own keys: "
                "algorithm, base_model, dataset)"
            )
        if self.algorithm in ROLLOUT_LOOPS and not (self.rewards or self.judge):
            raise ValueError(
                f"algorithm {self.algorithm} scores the policy's own answers: name rewards = [...] "
                "(@reward functions of [scoring] reward_modules) or set judge = true"
            )
        if self.algorithm not in ROLLOUT_LOOPS and (self.rewards or self.judge):
            raise ValueError(
                f"rewards and judge score rollouts (algorithm grpo-on-policy or rft), not {self.algorithm}; "
                "stored trajectories are scored by `learnloop rewards apply` and the daemon's scoring"
            )
        if "rollout" in self.train and {"rewards", "judge", "scoring"} & set(self.train["rollout"] or {}):
            raise ValueError(
                "train.rollout.rewards / judge / scoring are set by the loop: use its rewards and judge keys "
                "and [scoring]"
            )
        TrainConfig.model_validate(
            {
                **self.train,
                "algorithm": self.train_algorithm,
                "base_model": "x",
                "dataset": "x",
                "output_dir": "x",
                "rollout": self.rollout_settings({}),
            }
        )
        clash = {"scenario", "sources", "tags"} & set(self.dataset)
        if clash:
            raise ValueError(f"dataset.{sorted(clash)[0]} belongs at the loop's top level")
        return self

    @property
    def train_algorithm(self) -> str:
        """The training algorithm a cycle runs (grpo-on-policy is GRPO over rollouts)."""
        return TRAIN_ALGORITHM.get(self.algorithm, self.algorithm)

    @property
    def dataset_kind(self) -> str:
        """The dataset kind a cycle builds from the selection (rollout loops: prompts)."""
        return DATASET_KIND.get(self.algorithm, self.algorithm)

    @property
    def rollouts(self) -> bool:
        return self.algorithm in ROLLOUT_LOOPS

    def rollout_settings(self, scoring: dict[str, Any]) -> dict[str, Any]:
        """The training config's rollout section: the loop's rewards, judge flag and ``train.rollout``
        options, under ``scoring`` (the [scoring] settings, never with an API key)."""
        own = dict(self.train.get("rollout") or {})
        if not self.rollouts:
            return own
        return {**own, "rewards": list(self.rewards), "judge": self.judge, "scoring": scoring}

    @property
    def max_length(self) -> int:
        return int(self.train.get("max_length", TrainConfig.model_fields["max_length"].default))

    def _train_value(self, key: str) -> int:
        return int(self.train.get(key, TrainConfig.model_fields[key].default))

    def planned_epochs(self, examples: int) -> float | None:
        """Passes over ``examples`` a cycle would make, counted as training counts them (optimizer steps
        x ``grad_accum`` micro-batches of ``batch_size``, ceil(examples / batch_size) micro-batches a
        pass). None when ``train.max_steps`` is unset: the run is then sized in ``train.epochs``."""
        steps = self.train.get("max_steps")
        if not steps or examples <= 0:
            return None
        per_pass = math.ceil(examples / self._train_value("batch_size"))
        return int(steps) * self._train_value("grad_accum") / per_pass

    def examples_for(self, epochs: float) -> int | None:
        """The fewest examples a cycle needs to make at most ``epochs`` passes (None: not step-sized)."""
        steps = self.train.get("max_steps")
        if not steps:
            return None
        batches = math.ceil(int(steps) * self._train_value("grad_accum") / epochs)
        return self._train_value("batch_size") * (batches - 1) + 1


def base_model_of(settings: Settings, loop: LoopConfig) -> str:
    """The base model a loop trains: its own, else ``[training] base_model``."""
    return loop.base_model or settings.training.base_model


class DaemonSettings(ConfigModel):
    poll_interval: float = Field(
        2.0, gt=0, description="Seconds between looks for new jobs when idle (the daemon never busy-polls)."
    )
    lease_seconds: float = Field(
        60.0, gt=0, description="A job whose heartbeat is this old is taken over by another daemon."
    )
    heartbeat_seconds: float = Field(5.0, gt=0, description="How often a running job's lease is renewed.")
    stall_timeout: float = Field(
        900.0, gt=0, description="A job whose step counter has not moved this long is killed and retried."
    )
    retry_backoff: float = Field(
        30.0, ge=0, description="Seconds before the first retry; doubles after each."
    )
    retry_backoff_max: float = Field(3600.0, ge=0, description="Longest wait before a retry, in seconds.")
    score_interval: float = Field(
        60.0, gt=0, description="Seconds between background scoring passes over new trajectories."
    )
    judge: bool = Field(
        False,
        description="Also run the LLM judge over each loop's scenario in the "
        "background (needs scoring.judge_*).",
    )
    launcher: list[str] = Field(
        default_factory=list,
        description="Command that starts training, before the module, e.g. ['accelerate', 'launch', "
        "'--num_processes', '2']; empty: this Python.",
    )
    training_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads each training process may use (OMP_NUM_THREADS; unset: torch's default). "
        "On a small CPU that also serves, 1 here and serving.threads = 1 keep the two from oversubscribing "
        "the cores.",
    )
    output_tail_lines: int = Field(
        60, ge=1, description="Lines of a failed training's output kept on the job."
    )
    log_retention_days: int = Field(30, ge=1, description="Daily log files older than this are deleted.")
    trigger_modules: list[str] = Field(
        default_factory=list,
        description="Modules (dotted names or .py paths) imported before loops are checked, so their "
        "@trigger and @readiness_check functions register; loops name them in triggers.custom and "
        "triggers.custom_checks.",
    )

    @field_validator(
        "poll_interval",
        "lease_seconds",
        "heartbeat_seconds",
        "stall_timeout",
        "retry_backoff",
        "retry_backoff_max",
        "score_interval",
        mode="before",
    )
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration(v)
