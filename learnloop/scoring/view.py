"""TrajectoryView: the read-only trajectory a reward function sees."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from learnloop.config import ScoringSettings


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a message; list-of-parts content (OpenAI multimodal form) is joined."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return str(content)


@dataclass(frozen=True)
class ToolResult:
    tool_call_id: str | None
    name: str | None
    content: str


@dataclass
class TrajectoryView:
    """A trajectory as reward functions see it: plain data plus a few derived properties.

    Derived properties are computed on first use and cached, so a function that does not
    need them pays nothing for them.
    """

    id: str
    messages: Sequence[Mapping[str, Any]]
    scenario: str | None = None
    group_id: str | None = None
    source: str | None = None
    model: str | None = None
    tools: Sequence[Mapping[str, Any]] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    tags: Sequence[str] = ()
    created_at: dt.datetime | None = None
    # The scoring settings of the run, for built-ins with knobs (length target, named schemas).
    config: ScoringSettings = field(default_factory=ScoringSettings, repr=False)

    @classmethod
    def from_row(cls, row: Any, config: ScoringSettings | None = None) -> TrajectoryView:
        """Build from a `learnloop.store.Trajectory` row."""
        return cls(
            id=row.id,
            messages=row.messages or [],
            scenario=row.scenario,
            group_id=row.group_id,
            source=getattr(row.source, "value", row.source),
            model=row.model,
            tools=row.tools,
            metadata=row.meta or {},
            tags=row.tags or [],
            created_at=row.created_at,
            config=config or ScoringSettings(),
        )

    @cached_property
    def prompt(self) -> list[Mapping[str, Any]]:
        """Messages before the first assistant turn: what the model was asked."""
        out = []
        for m in self.messages:
            if m.get("role") == "assistant":
                break
            out.append(m)
        return out

    @cached_property
    def assistant_messages(self) -> list[Mapping[str, Any]]:
        return [m for m in self.messages if m.get("role") == "assistant"]

    @cached_property
    def final_message(self) -> Mapping[str, Any] | None:
        """The last assistant message, or None when the model never answered."""
        msgs = self.assistant_messages
        return msgs[-1] if msgs else None

    @cached_property
    def completion(self) -> str:
        """Text of the last assistant message ('' when there is none or it only calls tools)."""
        return message_text(self.final_message) if self.final_message is not None else ""

    @cached_property
    def tool_calls(self) -> list[Mapping[str, Any]]:
        """Every tool call the assistant made, in order (OpenAI `tool_calls` entries)."""
        return [c for m in self.assistant_messages for c in (m.get("tool_calls") or [])]

    @cached_property
    def tool_results(self) -> list[ToolResult]:
        """Every tool (or legacy function) result message, in order."""
        names = {c.get("id"): (c.get("function") or {}).get("name") for c in self.tool_calls}
        return [
            ToolResult(
                m.get("tool_call_id"), m.get("name") or names.get(m.get("tool_call_id")), message_text(m)
            )
            for m in self.messages
            if m.get("role") in ("tool", "function")
        ]
