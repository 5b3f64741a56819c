"""Kahneman-Tversky Optimization (KTO): learning from unpaired good and bad answers.

Feedback rarely comes in pairs: a thumbs up on one answer, a failed task on another. KTO trains on
such answers one at a time: records are TRL's unpaired format, ``{"prompt": [...], "completion":
[...], "label": true|false}`` (conversational, or plain strings), what ``learnloop datasets build kto``
writes from trajectories' feedback and rewards.

The loss is TRL's ``KTOTrainer`` loss (``loss_type="kto"``, Eq. 7 of the KTO paper): with
``r = log pi(y|x) - log ref(y|x)`` summed over the completion's tokens and ``z`` a detached estimate of
the KL divergence between policy and reference,

    desirable:    1 - sigmoid(beta * (r - z))      (weighted by kto.desirable_weight)
    undesirable:  1 - sigmoid(beta * (z - r))      (weighted by kto.undesirable_weight)

averaged over the micro-batch. ``z`` is the mean of ``r`` over mismatched pairs, each prompt with the
completion of the example before it in the micro-batch (the first with the last), clamped at 0: the
same rotation TRL uses, so a micro-batch needs at least two examples. The reference is the model with
the adapter disabled, as in DPO (no second copy of the weights). A test compares this loss with TRL's
on the same model and batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from learnloop.training.config import TrainConfig
from learnloop.training.lm import (
    IGNORE,
    as_messages,
    collate_ids,
    record_error,
    sequence_logprobs,
    tokenize_chat,
)
from learnloop.training.objective import Example, StepOutput, register_objective


class KTOObjective:
    name = "kto"

    def __init__(self, config: TrainConfig, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.max_length = config.max_length
        self.beta = config.kto.beta
        self.desirable_weight = config.kto.desirable_weight
        self.undesirable_weight = config.kto.undesirable_weight
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.desirable = 0
        self.undesirable = 0

    def prepare(self, record: dict[str, Any], line: int) -> Example | None:
        for key in ("prompt", "completion", "label"):
            if key not in record:
                raise record_error(line, key, "is missing (KTO records need prompt, completion, label)")
        label = record["label"]
        if not isinstance(label, bool):
            raise record_error(
                line, "label", f"must be true (desirable) or false (undesirable), got {label!r}"
            )
        prompt = as_messages(record["prompt"], line, "prompt", "user")
        completion = as_messages(record["completion"], line, "completion", "assistant")
        if not any(m["role"] == "assistant" for m in completion):
            raise record_error(line, "completion", "has no assistant message")
        tools = record.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise record_error(line, "tools", "must be a list of tool definitions")
        ids, labels = tokenize_chat(
            self.tokenizer,
            prompt + completion,
            tools=tools,
            train_from=len(prompt),
            max_length=self.max_length,
        )
        if all(t == IGNORE for t in labels[1:]):
            return None  # the prompt alone fills max_length
        # The completion starts at its first trained token; the prompt is what comes before it. The
        # KL pairs join one example's prompt with another's completion at this boundary, token-wise
        # (as TRL joins prompt_ids and completion_ids).
        start = next(i for i, t in enumerate(labels) if t != IGNORE)
        if label:
            self.desirable += 1
        else:
            self.undesirable += 1
        return Example(
            length=len(ids),
            data={"prompt_ids": ids[:start], "completion": (ids[start:], labels[start:]), "label": label},
        )

    def _row(
        self, prompt_ids: list[int], completion: tuple[list[int], list[int]]
    ) -> tuple[list[int], list[int]]:
        ids, labels = completion
        return (prompt_ids + ids)[: self.max_length], ([IGNORE] * len(prompt_ids) + labels)[: self.max_length]

    def collate(self, examples: list[Example]) -> dict[str, Any]:
        rows = [self._row(e.data["prompt_ids"], e.data["completion"]) for e in examples]
        # Mismatched pairs for the KL estimate: prompt i with the completion of example i - 1.
        kl_rows = [
            self._row(e.data["prompt_ids"], examples[i - 1].data["completion"])
            for i, e in enumerate(examples)
        ]
        batch: dict[str, Any] = collate_ids(rows, self.pad_id)
        batch.update({f"kl_{k}": v for k, v in collate_ids(kl_rows, self.pad_id).items()})
        # The reference scores both sets in one forward pass (it needs no gradient either way).
        batch.update({f"ref_{k}": v for k, v in collate_ids(rows + kl_rows, self.pad_id).items()})
        batch["label"] = torch.tensor([e.data["label"] for e in examples], dtype=torch.bool)
        return batch

    def compute(self, model: Any, batch: dict[str, Any]) -> StepOutput:
        keys = ("input_ids", "attention_mask", "labels")
        main = {k: batch[k] for k in keys}
        n = main["input_ids"].shape[0]
        policy = sequence_logprobs(model, main)
        with torch.no_grad():
            policy_kl = sequence_logprobs(model, {k: batch[f"kl_{k}"] for k in keys})
            with model.disable_adapter():
                both = sequence_logprobs(model, {k: batch[f"ref_{k}"] for k in keys})
        reference, reference_kl = both[:n], both[n:]
        z = (policy_kl - reference_kl).mean().clamp(min=0)
        logratio = policy - reference
        good = batch["label"].to(logratio.device)
        chosen, rejected = logratio[good], logratio[~good]
        losses = torch.cat(
            (
                self.desirable_weight * (1 - F.sigmoid(self.beta * (chosen - z))),
                self.undesirable_weight * (1 - F.sigmoid(self.beta * (z - rejected))),
            )
        )
        metrics = {"kl": float(z), "desirable_share": float(good.float().mean())}
        if chosen.numel():
            metrics["rewards/chosen"] = float(self.beta * chosen.detach().mean())
            metrics["logps/chosen"] = float(policy[good].detach().mean())
        if rejected.numel():
            metrics["rewards/rejected"] = float(self.beta * rejected.detach().mean())
            metrics["logps/rejected"] = float(policy[~good].detach().mean())
        if chosen.numel() and rejected.numel():
            metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return StepOutput(loss=losses.mean(), tokens=int(main["attention_mask"].sum()), metrics=metrics)


@register_objective("kto")
def make_kto(config: TrainConfig, tokenizer: Any) -> KTOObjective:
    return KTOObjective(config, tokenizer)
