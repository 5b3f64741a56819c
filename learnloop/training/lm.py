"""Token-level helpers shared by the objectives: chat rendering with assistant masks, padding, and
log-probabilities computed only where a label exists.

Why the masked log-probs: on a 49k vocabulary the ``lm_head`` projection and its softmax over every
position dominate a small model's step. Only completion tokens carry loss, so we run the decoder,
gather the hidden states at those positions and project just them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from learnloop.errors import ValidationFailed

IGNORE = -100


def _render(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    *,
    generation_prompt: bool,
) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt
    )


_SENTINEL = "\u2063learnloop-turn-start\u2063"


def _render_start(
    tokenizer: Any, prefix: list[dict[str, Any]], tools: list[dict[str, Any]] | None, turn: dict[str, Any]
) -> str:
    """The text before an assistant turn's content: the prefix plus the assistant header."""
    if prefix:
        return _render(tokenizer, prefix, tools, generation_prompt=True)
    # transformers refuses to render an empty conversation; find the header (and any default system
    # prompt the template adds) by rendering the turn with a sentinel for its content.
    text = _render(tokenizer, [{**turn, "content": _SENTINEL}], tools, generation_prompt=False)
    return text[: text.index(_SENTINEL)] if _SENTINEL in text else ""


def tokenize_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    train_from: int = 0,
    max_length: int | None = None,
) -> tuple[list[int], list[int]]:
    """Render ``messages`` with the chat template; return (input_ids, labels) where labels are
    IGNORE except on assistant turns at index >= ``train_from``.

    The assistant spans come from rendering prefixes: the text up to a turn with the generation
    prompt marks where the assistant's tokens start, the text through the turn marks where they end
    (its end-of-turn token included, so the model learns to stop). That works for any template that
    renders prefixes as string prefixes of the whole conversation (ChatML, Llama 3, Mistral ...),
    unlike ``return_assistant_tokens_mask``, which needs ``{% generation %}`` markers few templates have.
    """
    full = _render(tokenizer, messages, tools, generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg.get("role") != "assistant" or i < train_from:
            continue
        start_text = _render_start(tokenizer, messages[:i], tools, msg)
        end_text = _render(tokenizer, messages[: i + 1], tools, generation_prompt=False)
        if not full.startswith(end_text) or not end_text.startswith(start_text):
            raise ValidationFailed(
                "This tokenizer's chat template does not render conversation prefixes as prefixes of the "
                "whole conversation, so assistant tokens cannot be located for an assistant-only loss."
            )
        spans.append((len(start_text), len(end_text)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [IGNORE] * len(ids)
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        # A token belongs to a span when it starts inside it; tokens straddling the start are prompt.
        if any(s <= a < e and b > a for s, e in spans):
            labels[t] = ids[t]
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels


def pad(sequences: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-pad integer sequences into a (batch, max_len) tensor."""
    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out


def collate_ids(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """(input_ids, labels) pairs → padded input_ids, attention_mask, labels."""
    ids = pad([r[0] for r in rows], pad_id)
    labels = pad([r[1] for r in rows], IGNORE)
    mask = pad([[1] * len(r[0]) for r in rows], 0)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def causal_lm(model: Any) -> Any:
    """The transformers ``*ForCausalLM`` inside a (possibly peft-wrapped) model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def label_logprobs(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the labelled next tokens, computed only at those positions.

    Returns (token_logps of shape (n,), row index of each of them (n,)). Position t predicts t+1.
    """
    lm = causal_lm(model)
    hidden = lm.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    picked = hidden[:, :-1][keep]
    logits = lm.get_output_embeddings()(picked).float()
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    if softcap:  # Gemma-style models squash logits; keep the loss equal to the full forward's.
        logits = torch.tanh(logits / softcap) * softcap
    token_logps = -F.cross_entropy(logits, targets[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    return token_logps, rows


def sequence_logprobs(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the labelled tokens' log-probabilities per row, shape (batch,)."""
    token_logps, rows = label_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    out = torch.zeros(batch["input_ids"].shape[0], dtype=token_logps.dtype, device=token_logps.device)
    return out.index_add(0, rows, token_logps)


def record_error(line: int, field: str, why: str) -> ValidationFailed:
    """The error for a malformed JSONL record: names the line and the field."""
    return ValidationFailed(f"line {line}: field {field!r} {why}", [(f"line {line}: {field}", why)])


def check_messages(value: Any, line: int, field: str, *, also: str = "") -> list[dict[str, Any]]:
    """Validate an OpenAI-format message list; raise ValidationFailed naming line and field."""
    if not isinstance(value, list) or not value:
        raise record_error(line, field, f"must be a non-empty list of chat messages{also}")
    for i, msg in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise record_error(line, where, "must be an object with a string 'role'")
        content = msg.get("content")
        if content is not None and not isinstance(content, str):
            raise record_error(line, f"{where}.content", "must be a string (or null with tool_calls)")
        if content is None and not msg.get("tool_calls"):
            raise record_error(line, f"{where}.content", "is missing")
    return value


def as_messages(value: Any, line: int, field: str, role: str) -> list[dict[str, Any]]:
    """A message list, or a plain string wrapped as one ``role`` message; validated like check_messages."""
    if isinstance(value, str):
        if not value:
            raise record_error(line, field, "is empty")
        return [{"role": role, "content": value}]
    return check_messages(value, line, field, also=" (or a string)")
