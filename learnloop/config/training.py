"""The typed configuration of one training run (``learnloop train run --config``, a job's payload, a
loop's ``train`` table). It knows nothing of the database or the daemon; the training stage takes it
through ``learnloop.training.config``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from learnloop.config.base import DEFAULT_MAX_LENGTH, ConfigModel
from learnloop.config.scoring import ScoringSettings

Algorithm = Literal["sft", "dpo", "grpo", "rft", "kto"]
# Algorithms whose records are prompts the policy answers itself (GRPO only when it has a reward).
ROLLOUT_ALGORITHMS = ("grpo", "rft")


@dataclass(frozen=True)
class AlgorithmDefaults:
    """What a run of one algorithm uses when its config is silent.

    ``min_steps`` is a floor for whoever sizes runs (the daemon's cycles): a run with fewer optimizer
    steps is not worth starting. Measured with benchmarks/bench_no_teacher.py on the demo task
    (SmolLM2-135M, LoRA r=16, 2 shared CPU cores; figures in benchmarks/README.md, "No teacher"):

    - sft: lr 1e-3 reached 31/32 exact after 8 steps and 32/32 after 12; 2e-4 had 25/32 after 12,
      30/32 after 24 and 31/32 after 36. Floor 8.
    - rft: lr 1e-3 (the SFT loss on its own answers): 7/32 after 3 steps, 16/32 after 6, 15/32
      after 12. Floor 8.
    - grpo: lr 1e-3 raised the on-policy reward from 0.05 to 0.23 in 4 steps, 2e-4 to 0.13; neither
      answered a held-out case exactly within those 4 steps (about 2 minutes a step here). The floor
      16 is a judgement from that slope, not a measured success.
    - dpo, kto: nothing on this task tells rates apart (a base that is never right leaves KTO no
      desirable answer and DPO 5 pairs, which lr 1e-3 fits to a loss of 1e-9 within 10 steps): they
      keep the earlier default, 2e-4, and the floor 16.
    """

    learning_rate: float
    min_steps: int


ALGORITHM_DEFAULTS: dict[str, AlgorithmDefaults] = {
    "sft": AlgorithmDefaults(learning_rate=1e-3, min_steps=8),
    "dpo": AlgorithmDefaults(learning_rate=2e-4, min_steps=16),
    "grpo": AlgorithmDefaults(learning_rate=1e-3, min_steps=16),
    "rft": AlgorithmDefaults(learning_rate=1e-3, min_steps=8),
    "kto": AlgorithmDefaults(learning_rate=2e-4, min_steps=16),
}


class LoraConfig(ConfigModel):
    r: int = Field(16, ge=1, description="LoRA rank: the inner size of each adapter matrix pair.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator: updates are scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Module names to adapt, or 'all-linear' for every linear layer but the output.",
    )


class DPOConfig(ConfigModel):
    beta: float = Field(
        0.1, gt=0.0, description="DPO temperature: how far the policy may move from the reference."
    )


class GRPOConfig(ConfigModel):
    # Offline: groups of stored completions with rewards. Online (rollouts): when the rollout section
    # names rewards or the judge, the policy samples its own completions of each prompt.
    clip_eps: float = Field(0.2, gt=0.0, description="PPO-style clipping of the probability ratio.")
    scale_rewards: bool = Field(
        True, description="Divide each group's advantages by its reward standard deviation."
    )
    reward_fn: str | None = Field(
        None,
        description="Deprecated (use rollout.rewards): 'package.module:function' (or 'file.py:function') "
        "taking (prompt_messages, completion_text, **record_keys) -> float.",
    )
    num_generations: int | None = Field(None, ge=2, description="Deprecated: use rollout.num_generations.")
    max_new_tokens: int | None = Field(None, ge=1, description="Deprecated: use rollout.max_new_tokens.")
    temperature: float | None = Field(None, gt=0.0, description="Deprecated: use rollout.temperature.")


class RolloutScoring(ScoringSettings):
    """[scoring] as a training config carries it: everything but the judge's API key."""

    judge_api_key: None = Field(  # type: ignore[assignment]
        None,
        description="Never written into a training config: the training process reads "
        "LEARNLOOP_SCORING__JUDGE_API_KEY from its environment.",
    )


class RolloutConfig(ConfigModel):
    """How the policy answers prompts itself and how its answers are scored (online GRPO, RFT).

    The training process imports ``scoring.reward_modules`` itself (their ``@reward`` functions
    register), scores every sample with the functions named in ``rewards`` and/or the group judge,
    and turns the aspects into one reward with the project's reward rule (``[scoring]`` weights and
    combine settings): the same numbers the store would hold for those answers.
    """

    rewards: list[str] = Field(
        default_factory=list,
        description="Names of registered @reward functions that score each sample (built-ins, or those "
        "of scoring.reward_modules).",
    )
    judge: bool = Field(
        False,
        description="Also rank the samples of each prompt against each other with the group judge "
        "(the endpoint of scoring.judge_base_url / judge_model; its score is the aspect 'judge').",
    )
    scoring: RolloutScoring = Field(
        default_factory=RolloutScoring,
        description="The [scoring] settings rewards run under (reward_modules, weights, combine, judge_*). "
        "The judge's API key is never written here: the process reads LEARNLOOP_SCORING__JUDGE_API_KEY.",
    )
    num_generations: int = Field(4, ge=1, description="Completions sampled per prompt.")
    max_new_tokens: int = Field(64, ge=1, description="Tokens per sampled completion.")
    temperature: float = Field(1.0, gt=0.0, description="Sampling temperature.")
    max_flat_groups: int = Field(
        16,
        ge=1,
        description="A run whose first this many prompts (or all of them, if fewer) gave no learning "
        "signal (GRPO: every sample scored alike; RFT: none reached the bar) stops with an error "
        "saying so, instead of training on nothing.",
    )

    @field_validator("scoring", mode="before")
    @classmethod
    def _scoring(cls, value: Any) -> Any:
        # A dumped config carries judge_api_key: null; any value at all is refused.
        key = value.judge_api_key if isinstance(value, ScoringSettings) else None
        if isinstance(value, dict):
            key = value.get("judge_api_key")
        if key is not None:
            raise ValueError(
                "judge_api_key must not be written into a training config; "
                "set LEARNLOOP_SCORING__JUDGE_API_KEY in the training process's environment"
            )
        if isinstance(value, ScoringSettings):
            return value.model_dump(exclude={"judge_api_key"})
        return value

    @property
    def active(self) -> bool:
        """Whether anything scores samples (so the records are prompts to answer)."""
        return bool(self.rewards) or self.judge


class RFTConfig(ConfigModel):
    min_reward: float = Field(
        1.0, description="The bar: samples (and given answers) whose reward is at least this are trained."
    )
    best_above_mean: float | None = Field(
        None,
        description="Also keep a prompt's best answer below the bar (one per prompt) when it scores above "
        "the mean of that prompt's samples and at least this much (None: off). With partial credit this "
        "bar rises as the model improves: the best of its own answers, never what it gives on average.",
    )
    max_per_prompt: int = Field(
        2, ge=1, description="Most distinct passing answers of one prompt trained per step (best first)."
    )
    include_given: bool = Field(
        True,
        description="Records' own answers ('completion', e.g. what was served) join the candidates: scored "
        "with the samples, or by the record's 'reward' when it has one.",
    )


class KTOConfig(ConfigModel):
    beta: float = Field(
        0.1, gt=0.0, description="KTO temperature: how far the policy may move from the base."
    )
    desirable_weight: float = Field(1.0, gt=0.0, description="Weight of the desirable (label true) losses.")
    undesirable_weight: float = Field(
        1.0,
        gt=0.0,
        description="Weight of the undesirable losses; with unequal counts keep desirable_weight x desirable "
        "between 1 and 4/3 of undesirable_weight x undesirable (the KTO paper's advice).",
    )


class TrainConfig(ConfigModel):
    """One training run. Rules across fields (refused with a 422 naming them): rft needs rollout.rewards
    or rollout.judge; online GRPO needs rollout.num_generations >= 2; kto needs batch_size >= 2;
    grpo.reward_fn and rollout's rewards are not both set; a deprecated grpo.num_generations,
    max_new_tokens or temperature agrees with the rollout key of the same name when both are set."""

    algorithm: Algorithm = Field(description="Training algorithm: sft, dpo, grpo, rft or kto.")
    base_model: str = Field(
        description="An HF model folder, a GGUF file, or a prepared model name (`learnloop models list`)."
    )
    dataset: Path = Field(
        description="JSONL in TRL's formats: SFT `messages`; DPO `prompt`/`chosen`/`rejected`; GRPO "
        "`prompt`/`completions`/`rewards`; KTO `prompt`/`completion`/`label`; rollouts (online GRPO, RFT) "
        "`prompt` with optional `completion`, `reward`, `scenario`, `metadata`, `tags`, `tools`."
    )
    output_dir: Path = Field(description="Where checkpoints, metrics and the final adapter go.")
    init_adapter: Path | None = Field(
        None, description="Continue training this existing adapter instead of a fresh one."
    )
    keep_optimizer_state: bool = Field(
        False, description="With init_adapter: restore the optimizer state saved beside it."
    )

    lora: LoraConfig = Field(default_factory=LoraConfig, description="The adapter's shape.")
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="DPO settings.")
    grpo: GRPOConfig = Field(default_factory=GRPOConfig, description="GRPO settings.")
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig, description="Sampling and scoring of the policy's own answers."
    )
    rft: RFTConfig = Field(default_factory=RFTConfig, description="Rejection-sampling fine-tuning settings.")
    kto: KTOConfig = Field(default_factory=KTOConfig, description="KTO settings.")

    max_length: int = Field(
        DEFAULT_MAX_LENGTH,
        ge=8,
        description="Tokens per example; longer ones are truncated (default: datasets.max_length's).",
    )
    batch_size: int = Field(4, ge=1, description="Micro-batch size (examples per forward pass).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    epochs: float = Field(1.0, gt=0.0, description="Passes over the dataset.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs when set.")
    learning_rate: float | None = Field(
        None, gt=0.0, description="Peak learning rate (unset: the algorithm's default, ALGORITHM_DEFAULTS)."
    )
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        "cosine", description="Learning-rate schedule."
    )
    warmup_steps: int = Field(0, ge=0, description="Optimizer steps of linear warm-up.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradients are clipped to this norm.")
    length_grouping: bool = Field(True, description="Batch examples of similar length (less padding).")
    seed: int = Field(0, description="Random seed (data order, initialisation, sampling).")

    eval_dataset: Path | None = Field(
        None, description="Held-out JSONL in the training format; its loss is logged as eval_loss."
    )
    eval_every: int | None = Field(
        None,
        ge=1,
        description="Optimizer steps between held-out losses (and at the last step); needs eval_dataset.",
    )

    checkpoint_every: int = Field(50, ge=1, description="Optimizer steps between committed checkpoints.")
    keep_checkpoints: int = Field(2, ge=1, description="Committed checkpoints kept; older ones are removed.")

    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 on a GPU that supports it, else fp32."
    )

    @model_validator(mode="after")
    def _resolve(self) -> TrainConfig:
        if self.learning_rate is None:
            self.learning_rate = ALGORITHM_DEFAULTS[self.algorithm].learning_rate
        self._move_deprecated_grpo_keys()
        if self.grpo.reward_fn is not None and self.rollout.active:
            raise ValueError(
                "grpo.reward_fn and rollout.rewards / rollout.judge both name rewards; keep rollout's"
            )
        if self.algorithm == "grpo" and self.online and self.rollout.num_generations < 2:
            raise ValueError("online GRPO compares samples: rollout.num_generations must be at least 2")
        if self.algorithm == "rft" and not self.rollout.active:
            raise ValueError(
                "rft samples answers and keeps those a reward passes: name rollout.rewards "
                "(registered @reward functions) or set rollout.judge = true"
            )
        if self.algorithm == "kto" and self.batch_size < 2:
            raise ValueError(
                "kto estimates its KL term from other examples of the same micro-batch: batch_size >= 2"
            )
        return self

    def _move_deprecated_grpo_keys(self) -> None:
        moved = [k for k in ("num_generations", "max_new_tokens", "temperature") if getattr(self.grpo, k)]
        for key in moved:
            if key in self.rollout.model_fields_set and getattr(self.rollout, key) != getattr(self.grpo, key):
                raise ValueError(f"grpo.{key} (deprecated) and rollout.{key} disagree; keep rollout.{key}")
            setattr(self.rollout, key, getattr(self.grpo, key))
            setattr(self.grpo, key, None)
        if moved:
            warnings.warn(
                f"grpo.{', grpo.'.join(moved)} moved to the rollout section (rollout.{moved[0]} ...); "
                "the grpo keys still work for now.",
                FutureWarning,  # the category Python shows to end users, who write these configs
                stacklevel=2,
            )

    @property
    def online(self) -> bool:
        """Whether the run samples its own completions (online GRPO, RFT)."""
        return self.algorithm in ROLLOUT_ALGORITHMS and (
            self.rollout.active or self.grpo.reward_fn is not None
        )
