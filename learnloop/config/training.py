"""The typed configuration of one training run (``learnloop train run --config``, a job's payload, a
loop's ``train`` table). It knows nothing of the database or the daemon; the training stage takes it
through ``learnloop.training.config``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from learnloop.config.base import DEFAULT_MAX_LENGTH, ConfigModel


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
    # Offline: groups of stored completions with rewards. Online: when reward_fn is set, the
    # policy samples num_generations completions per prompt and reward_fn scores them.
    reward_fn: str | None = Field(
        None,
        description="'package.module:function' (or 'file.py:function') taking "
        "(prompt_messages, completion_text) -> float; set for online GRPO.",
    )
    num_generations: int = Field(4, ge=2, description="Online GRPO: completions sampled per prompt.")
    max_new_tokens: int = Field(64, ge=1, description="Online GRPO: tokens per sampled completion.")
    temperature: float = Field(1.0, gt=0.0, description="Online GRPO: sampling temperature.")
    clip_eps: float = Field(0.2, gt=0.0, description="PPO-style clipping of the probability ratio.")
    scale_rewards: bool = Field(
        True, description="Divide each group's advantages by its reward standard deviation."
    )


class TrainConfig(ConfigModel):
    algorithm: Literal["sft", "dpo", "grpo"] = Field(description="Training algorithm.")
    base_model: str = Field(
        description="An HF model folder, a GGUF file, or a prepared model name (`learnloop models list`)."
    )
    dataset: Path = Field(
        description="JSONL in TRL's formats: SFT `messages`; DPO `prompt`/`chosen`/`rejected`; GRPO "
        "`prompt`/`completions`/`rewards` (or `prompt` alone for online GRPO)."
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

    max_length: int = Field(
        DEFAULT_MAX_LENGTH,
        ge=8,
        description="Tokens per example; longer ones are truncated (default: datasets.max_length's).",
    )
    batch_size: int = Field(4, ge=1, description="Micro-batch size (examples per forward pass).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    epochs: float = Field(1.0, gt=0.0, description="Passes over the dataset.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs when set.")
    learning_rate: float = Field(2e-4, gt=0.0, description="Peak learning rate.")
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
