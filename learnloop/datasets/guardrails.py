"""Checks run on every example before a dataset is used: message shape, token lengths against max length.

Token counting is pluggable: :class:`HFTokenCounter` renders each conversation with the model's
chat template and counts with its tokenizer (exact for that model); :class:`ApproxTokenCounter`
needs no model and estimates ``ceil(characters / 4) + 4`` per message plus 2 for the reply header,
the usual rule of thumb for English text with BPE tokenizers (expect +-30%).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from learnloop.errors import ConfigError
from learnloop.store.records import MESSAGE

Conversation = list[dict[str, Any]]


def split_prompt(messages: Sequence[dict[str, Any]]) -> tuple[Conversation, Conversation]:
    """(prompt, completion): the messages before the first assistant turn, and the rest."""
    for i, m in enumerate(messages):
        if isinstance(m, dict) and m.get("role") == "assistant":
            return list(messages[:i]), list(messages[i:])
    return list(messages), []


_PLAIN_ROLES = frozenset({"system", "developer", "user", "assistant"})


def check_messages(messages: Any, *, need_completion: bool = True) -> str | None:
    """Why ``messages`` cannot be a training example, or None when it can."""
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"message {i} is not an object"
        # The usual message, {"role": ..., "content": "text"}, passes the schema: skip its full check,
        # which was a tenth of a dataset build.
        if len(m) == 2 and type(m.get("content")) is str and m.get("role") in _PLAIN_ROLES:
            continue
        try:
            MESSAGE.validate_python(m)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            return f"message {i}{'.' + where if where else ''}: {err['msg']}"
        if isinstance(m.get("content"), list):
            return f"message {i} has content parts (images/audio); only text content can be trained on"
    prompt, completion = split_prompt(messages)
    if not any(m.get("role") == "user" for m in prompt):
        return "no user message before the first assistant message"
    if need_completion:
        if not completion:
            return "no assistant message to learn from"
        last = completion[-1]
        if last.get("role") != "assistant":
            return f"the conversation ends with a '{last.get('role')}' message, not an assistant answer"
        if not (last.get("content") or "").strip() and not last.get("tool_calls"):
            return "the final assistant message is empty"
    return None


def correction_message(correction: Any) -> tuple[dict[str, Any] | None, str | None]:
    """A feedback correction (text or assistant message) as an assistant message,
    or the reason it is unusable."""
    if isinstance(correction, str):
        if not correction.strip():
            return None, "the correction is empty"
        return {"role": "assistant", "content": correction}, None
    if isinstance(correction, dict):
        msg = {"role": "assistant", **correction}
        if msg["role"] != "assistant":
            return None, f"a correction must be an assistant message, got role '{msg['role']}'"
        reason = check_messages([{"role": "user", "content": "-"}, msg])
        if reason:
            return None, f"correction: {reason.replace('message 1', 'message')}"
        return msg, None
    return None, f"a correction must be text or an assistant message, got {type(correction).__name__}"


def conversation_text(messages: Sequence[dict[str, Any]]) -> str:
    """Plain text of a conversation, for duplicate detection."""
    parts = []
    for m in messages:
        content = m.get("content")
        parts.append(f"{m.get('role')}: {content if isinstance(content, str) else json.dumps(content)}")
        for call in m.get("tool_calls") or ():
            parts.append(json.dumps(call, sort_keys=True))
    return "\n".join(parts)


class TokenCounter(Protocol):
    """Counts the tokens of whole conversations, in batches."""

    name: str

    def count(self, conversations: Sequence[Conversation]) -> list[int]: ...


class ApproxTokenCounter:
    """No model needed: ``ceil(chars / 4) + 4`` per message, + 2 for the reply header."""

    name = "approx(chars/4+4 per message)"

    def count(self, conversations: Sequence[Conversation]) -> list[int]:
        return [self._one(c) for c in conversations]

    @staticmethod
    def _one(conversation: Conversation) -> int:
        total = 2
        for m in conversation:
            content = m.get("content")
            chars = len(content) if isinstance(content, str) else len(json.dumps(content)) if content else 0
            for call in m.get("tool_calls") or ():
                chars += len(json.dumps(call))
            total += math.ceil(chars / 4) + 4
        return total


class HFTokenCounter:
    """Exact counts for one model: its chat template rendered, then its tokenizer."""

    def __init__(
        self, path: str | Path | None = None, *, tokenizer: Any = None, name: str | None = None
    ) -> None:
        if tokenizer is not None:  # an already loaded tokenizer (e.g. the one training uses)
            self.tokenizer = tokenizer
            self.name = name or f"hf:{getattr(tokenizer, 'name_or_path', '?')}"
            self._has_template = bool(getattr(tokenizer, "chat_template", None))
            return
        if path is None:
            raise ConfigError("HFTokenCounter needs a tokenizer folder or a loaded tokenizer.")
        try:
            from transformers import AutoTokenizer
        except ImportError:  # pragma: no cover - the train extra is missing
            raise ConfigError(
                "Counting tokens with a model's tokenizer needs the 'train' extra (transformers)."
            ) from None
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ConfigError(
                f"Tokenizer folder {str(folder)!r} does not exist. Point datasets.tokenizer "
                "(or --tokenizer) at an HF model folder, or leave it unset for the approximate count."
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:
            raise ConfigError(f"Could not load a tokenizer from {str(folder)!r}: {exc}") from None
        self.name = f"hf:{folder}"
        self._has_template = bool(getattr(self.tokenizer, "chat_template", None))

    def _render(self, conversation: Conversation) -> str:
        if self._has_template:
            try:
                return str(self.tokenizer.apply_chat_template(conversation, tokenize=False))
            except Exception:  # a template that rejects this shape (e.g. tool calls): count the plain text
                pass
        return conversation_text(conversation)

    def count(self, conversations: Sequence[Conversation]) -> list[int]:
        if not conversations:
            return []
        texts = [self._render(c) for c in conversations]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]


def token_counter(spec: str | Path | None) -> TokenCounter:
    """The counter for a tokenizer folder, or the approximate one when ``spec`` is empty."""
    if not spec:
        return ApproxTokenCounter()
    return HFTokenCounter(spec)


def percentile(sorted_values: Sequence[int], p: float) -> int:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return int(sorted_values[rank - 1])


def suggest_max_length(p99: int, multiple: int = 64) -> int:
    return max(multiple, math.ceil(p99 / multiple) * multiple)


def length_report(
    lengths: Sequence[int],
    max_length: int,
    ids: Sequence[str] | None = None,
    *,
    worst: int = 10,
    counter: str = "",
) -> dict[str, Any]:
    """Token-length percentiles, how many examples the max length truncates and
    by how much, a suggested length."""
    values = sorted(lengths)
    n = len(values)
    over = [v - max_length for v in values if v > max_length]
    p99 = percentile(values, 99)
    suggested = suggest_max_length(p99)
    report: dict[str, Any] = {
        "tokenizer": counter,
        "count": n,
        "max_length": max_length,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": p99,
        "max": values[-1] if values else 0,
        "mean": round(sum(values) / n, 1) if n else 0.0,
        "truncated": len(over),
        "truncated_share": round(len(over) / n, 4) if n else 0.0,
        "truncated_tokens_max": max(over, default=0),
        "truncated_tokens_mean": round(sum(over) / len(over), 1) if over else 0.0,
        "truncated_tokens_total": sum(over),
        "suggested_max_length": suggested,
    }
    if ids is not None:
        ranked = sorted(zip(lengths, ids), key=lambda t: (-t[0], t[1]))[:worst]
        report["longest"] = [{"item": i, "tokens": t} for t, i in ranked]
    if over:
        report["advice"] = (
            f"{len(over)} of {n} examples exceed max_length {max_length} "
            f"(by up to {max(over)} tokens) and will be truncated; raise datasets.max_length to {suggested} "
            "(covers 99%) or filter long examples out."
        )
    elif n and suggested < max_length // 2:
        report["advice"] = (
            f"max_length {max_length} is far above p99 {p99}; {suggested} would cover 99% with less memory."
        )
    return report


# --------------------------------------------------------------------------- before training


def _as_messages(value: Any) -> Conversation:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, dict):
        return [value]
    return [m for m in value if isinstance(m, dict)] if isinstance(value, list) else []


def _completion(value: Any) -> Conversation:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    return _as_messages(value)


def training_conversations(record: dict[str, Any]) -> list[Conversation]:
    """The sequences training builds from one TRL-format record (SFT, DPO or GRPO);
    the longest is truncated first."""
    if "messages" in record:
        return [_as_messages(record["messages"])]
    prompt = _as_messages(record.get("prompt", []))
    if "chosen" in record or "rejected" in record:
        return [prompt + _completion(record.get(k, [])) for k in ("chosen", "rejected")]
    if "completions" in record:
        return [prompt + _completion(c) for c in record.get("completions") or []] or [prompt]
    if "completion" in record:
        return [prompt + _completion(record["completion"])]
    return [prompt]


@dataclass
class LengthCheck:
    """The token-length report of a training file against a max length, and whether training may start."""

    report: dict[str, Any]
    max_length: int
    max_truncated_share: float

    @property
    def ok(self) -> bool:
        return self.report["truncated_share"] <= self.max_truncated_share

    @property
    def suggested_max_length(self) -> int:
        return int(self.report["suggested_max_length"])

    def summary(self) -> str:
        r = self.report
        return (
            f"tokens ({r['tokenizer']}): p50 {r['p50']}, p95 {r['p95']}, p99 {r['p99']}, "
            f"max {r['max']} against max_length {r['max_length']}; {r['truncated']} of {r['count']} examples "
            f"({r['truncated_share']:.1%}) would be truncated (by up to {r['truncated_tokens_max']} tokens)"
        )

    def refusal(self) -> str:
        r = self.report
        return (
            f"{r['truncated']} of {r['count']} training examples ({r['truncated_share']:.1%}) are longer "
            f"than max_length {self.max_length} and would be truncated (allowed: "
            f"{self.max_truncated_share:.0%}, training.max_truncated_share). "
            f"Set max_length to {self.suggested_max_length} (covers 99%), filter long examples out, "
            "or pass --allow-truncation."
        )


def check_training_lengths(
    dataset: str | Path,
    *,
    tokenizer: Any,
    max_length: int,
    max_truncated_share: float = 0.05,
    batch: int = 256,
) -> LengthCheck:
    """Measure a training JSONL's token lengths with the model's tokenizer (a loaded tokenizer, a folder,
    or a TokenCounter) against ``max_length``. Lines that are not JSON objects are left to the trainer
    to report."""
    counter: TokenCounter
    if isinstance(tokenizer, (str, Path)):
        counter = HFTokenCounter(tokenizer)
    elif hasattr(tokenizer, "count") and not hasattr(tokenizer, "encode"):  # a TokenCounter
        counter = tokenizer
    else:
        counter = HFTokenCounter(tokenizer=tokenizer)
    lengths: list[int] = []
    ids: list[str] = []
    pending: list[tuple[str, list[Conversation]]] = []

    def drain() -> None:
        flat = [c for _, convs in pending for c in convs]
        counts = iter(counter.count(flat))
        for line_id, convs in pending:
            lengths.append(max(next(counts) for _ in convs))
            ids.append(line_id)
        pending.clear()

    if not Path(dataset).is_file():
        from learnloop.errors import ValidationFailed

        raise ValidationFailed(f"Dataset file {dataset} does not exist.")
    with open(dataset, encoding="utf-8", errors="replace") as fh:
        for lineno, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            convs = [c for c in training_conversations(record) if c]
            if convs:
                pending.append((str(record.get("id", f"line {lineno}")), convs))
            if len(pending) >= batch:
                drain()
    drain()
    report = length_report(lengths, max_length, ids, counter=counter.name)
    return LengthCheck(report, max_length, max_truncated_share)


def guard_training_lengths(
    dataset: str | Path,
    *,
    tokenizer: Any,
    max_length: int,
    max_truncated_share: float = 0.05,
    allow_truncation: bool = False,
) -> LengthCheck:
    """``check_training_lengths``, raising ``TruncationRefused``
    (naming a max_length) unless it passes or is allowed."""
    check = check_training_lengths(
        dataset, tokenizer=tokenizer, max_length=max_length, max_truncated_share=max_truncated_share
    )
    if not check.ok and not allow_truncation:
        from learnloop.errors import TruncationRefused

        raise TruncationRefused(check.refusal(), check)
    return check
