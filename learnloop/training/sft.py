"""Supervised fine-tuning: cross-entropy on the assistant's tokens of chat conversations.

Records are TRL's conversational SFT formats: ``{"messages": [...], "tools": [...]?}`` (every
assistant turn is trained) or ``{"prompt": [...], "completion": [...]}`` (only the completion's
assistant turns are). Messages are OpenAI-format dicts; assistant tool calls are allowed.
"""

from __future__ import annotations

from typing import Any

import torch

from learnloop.training.config import TrainConfig
from learnloop.training.lm import (
    IGNORE,
    check_messages,
    collate_ids,
    label_logprobs,
    record_error,
    tokenize_chat,
)
from learnloop.training.objective import Example, StepOutput, register_objective


class SFTObjective:
    name = "sft"

    def __init__(self, config: TrainConfig, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.max_length = config.max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def prepare(self, record: dict[str, Any], line: int) -> Example | None:
        tools = record.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise record_error(line, "tools", "must be a list of tool definitions")
        if "messages" in record:
            messages = check_messages(record["messages"], line, "messages")
            train_from = 0
        elif "prompt" in record and "completion" in record:
            prompt = check_messages(record["prompt"], line, "prompt")
            messages = prompt + check_messages(record["completion"], line, "completion")
            train_from = len(prompt)
        else:
            raise record_error(
                line, "messages", "is missing (SFT records need 'messages', or 'prompt' and 'completion')"
            )
        if not any(m["role"] == "assistant" for m in messages[train_from:]):
            raise record_error(line, "messages", "has no assistant message to learn from")
        ids, labels = tokenize_chat(
            self.tokenizer, messages, tools=tools, train_from=train_from, max_length=self.max_length
        )
        # Position 0 never carries loss (nothing predicts it), so at least one later label is needed.
        if all(label == IGNORE for label in labels[1:]):
            return None  # truncation cut away every assistant token
        return Example(length=len(ids), data={"input_ids": ids, "labels": labels})

    def collate(self, examples: list[Example]) -> dict[str, Any]:
        return collate_ids([(e.data["input_ids"], e.data["labels"]) for e in examples], self.pad_id)

    def compute(self, model: Any, batch: dict[str, Any]) -> StepOutput:
        token_logps, _ = label_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        loss = -token_logps.mean()
        return StepOutput(
            loss=loss,
            tokens=int(batch["attention_mask"].sum()),
            metrics={"trained_tokens": float(token_logps.numel())},
        )


@register_objective("sft")
def make_sft(config: TrainConfig, tokenizer: Any) -> SFTObjective:
    return SFTObjective(config, tokenizer)


def full_logits_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The plain transformers loss (logits at every position); the reference the fast path must match."""
    return model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss
