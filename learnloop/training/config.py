"""The typed configuration of one training run. It knows nothing of the database or the daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from learnloop.config import DEFAULT_MAX_LENGTH


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraConfig(_Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class DPOConfig(_Strict):
    beta: float = Field(0.1, gt=0.0)


class GRPOConfig(_Strict):
    # Offline: groups of stored completions with rewards. Online: when reward_fn is set, the
    # policy samples num_generations completions per prompt and reward_fn scores them.
    reward_fn: str | None = Field(None, description="'package.module:function' taking (prompt_messages, completion_text) -> float.")
    num_generations: int = Field(4, ge=2)
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, gt=0.0)
    clip_eps: float = Field(0.2, gt=0.0)
    scale_rewards: bool = True


class TrainConfig(_Strict):
    algorithm: Literal["sft", "dpo", "grpo"]
    base_model: str = Field(description="An HF model folder, a GGUF file, or a prepared model name (`learnloop models list`).")
    dataset: Path = Field(description="JSONL in TRL's formats: SFT `messages`; DPO `prompt`/`chosen`/`rejected`; GRPO `prompt`/`completions`/`rewards` (or `prompt` alone for online GRPO).")
    output_dir: Path
    init_adapter: Path | None = Field(None, description="Continue training this existing adapter instead of a fresh one.")
    keep_optimizer_state: bool = Field(False, description="With init_adapter: restore the optimizer state saved beside it.")

    lora: LoraConfig = Field(default_factory=LoraConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)

    max_length: int = Field(DEFAULT_MAX_LENGTH, ge=8, description="Tokens per example; longer ones are truncated (the same default as datasets.max_length).")
    batch_size: int = Field(4, ge=1, description="Micro-batch size (examples per forward pass).")
    grad_accum: int = Field(1, ge=1)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs when set.")
    learning_rate: float = Field(2e-4, gt=0.0)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    length_grouping: bool = True
    seed: int = 0

    eval_dataset: Path | None = Field(None, description="Held-out JSONL in the training format; its loss is logged as eval_loss.")
    eval_every: int | None = Field(None, ge=1, description="Optimizer steps between held-out losses (and at the last step); needs eval_dataset.")

    checkpoint_every: int = Field(50, ge=1, description="Optimizer steps between committed checkpoints.")
    keep_checkpoints: int = Field(2, ge=1)

    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="auto: bf16 on a GPU that supports it, else fp32.")
