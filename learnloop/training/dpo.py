"""Direct Preference Optimization (sigmoid loss) with the base model as the implicit reference.

Records are TRL's preference format: ``prompt``, ``chosen``, ``rejected`` — conversational (lists of
messages; chosen/rejected hold the assistant turn(s)) or plain strings (wrapped as one user and one
assistant message). The reference log-probs come from the same model with the LoRA adapter
disabled, so no second copy of the weights is held in memory.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from learnloop.errors import ValidationFailed
from learnloop.training.config import TrainConfig
from learnloop.training.lm import IGNORE, as_messages, collate_ids, sequence_logprobs, tokenize_chat
from learnloop.training.objective import Example, StepOutput, register_objective


class DPOObjective:
    name = "dpo"

    def __init__(self, config: TrainConfig, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.beta = config.dpo.beta
        self.max_length = config.max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def prepare(self, record: dict[str, Any], line: int) -> Example | None:
        for field in ("prompt", "chosen", "rejected"):
            if field not in record:
                raise ValidationFailed(
                    f"line {line}: field {field!r} is missing (DPO records need prompt, chosen, rejected)",
                    [(f"line {line}: {field}", "is missing")],
                )
        prompt = as_messages(record["prompt"], line, "prompt", "user")
        tools = record.get("tools")
        sides = []
        for field in ("chosen", "rejected"):
            completion = as_messages(record[field], line, field, "assistant")
            if not any(m["role"] == "assistant" for m in completion):
                raise ValidationFailed(
                    f"line {line}: field {field!r} has no assistant message",
                    [(f"line {line}: {field}", "no assistant message")],
                )
            ids, labels = tokenize_chat(
                self.tokenizer,
                prompt + completion,
                tools=tools,
                train_from=len(prompt),
                max_length=self.max_length,
            )
            if all(label == IGNORE for label in labels[1:]):
                return None  # the prompt alone fills max_length: nothing left to compare
            sides.append((ids, labels))
        return Example(
            length=max(len(sides[0][0]), len(sides[1][0])), data={"chosen": sides[0], "rejected": sides[1]}
        )

    def collate(self, examples: list[Example]) -> dict[str, Any]:
        # Chosen rows first, then rejected rows: one forward pass scores both.
        rows = [e.data["chosen"] for e in examples] + [e.data["rejected"] for e in examples]
        return collate_ids(rows, self.pad_id)

    def compute(self, model: Any, batch: dict[str, Any]) -> StepOutput:
        n = batch["input_ids"].shape[0] // 2
        policy = sequence_logprobs(model, batch)
        with torch.no_grad(), model.disable_adapter():
            reference = sequence_logprobs(model, batch)
        chosen = self.beta * (policy[:n] - reference[:n])
        rejected = self.beta * (policy[n:] - reference[n:])
        margin = chosen - rejected
        loss = -F.logsigmoid(margin).mean()
        metrics = {
            "rewards/chosen": float(chosen.detach().mean()),
            "rewards/rejected": float(rejected.detach().mean()),
            "rewards/margins": float(margin.detach().mean()),
            "rewards/accuracies": float((margin.detach() > 0).float().mean()),
            "logps/chosen": float(policy[:n].detach().mean()),
            "logps/rejected": float(policy[n:].detach().mean()),
        }
        return StepOutput(loss=loss, tokens=int(batch["attention_mask"].sum()), metrics=metrics)


@register_objective("dpo")
def make_dpo(config: TrainConfig, tokenizer: Any) -> DPOObjective:
    return DPOObjective(config, tokenizer)
