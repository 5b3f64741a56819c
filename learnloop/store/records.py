"""Validated input records: the wire format shared by the SDK, the HTTP API and JSONL import.

A JSONL line, an API item and an SDK record all have this shape::

    {"id"?, "scenario"?, "group"?, "agent"?, "source"?, "model"?, "messages": [...],
     "tools"?, "metadata"?, "tags"?, "scores"?: {name: value}, "feedback"?: {...}}
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from learnloop.errors import ValidationFailed
from learnloop.store.models import ScoreSource, Source

ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    arguments: str | dict[str, Any] = ""


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    type: str = "function"
    function: ToolCallFunction


class Message(BaseModel):
    """One OpenAI chat message. Unknown keys are kept (providers add their own)."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _check_shape(self) -> "Message":
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs 'tool_call_id' naming the call it answers")
        if self.role != "assistant" and self.content is None:
            raise ValueError(f"a '{self.role}' message needs 'content'")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an 'assistant' message needs 'content' or 'tool_calls'")
        return self


class FeedbackIn(_Strict):
    """Feedback on one trajectory. At least one signal must be present."""

    trajectory_id: str | None = Field(None, description="Set by the caller for late feedback; implied inside a trajectory.")
    idempotency_key: str | None = None
    rating: float | None = Field(None, description="Numeric rating, any scale; scoring normalises it.")
    thumbs: Literal[-1, 1] | None = Field(None, description="+1 thumbs up, -1 thumbs down.")
    success: bool | None = Field(None, description="Whether the task succeeded.")
    correction: str | dict[str, Any] | None = Field(None, description="The corrected answer (text or assistant message).")
    comment: str | None = None
    author: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: dt.datetime | None = None

    @field_validator("thumbs", mode="before")
    @classmethod
    def _thumbs(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return 1 if v else -1
        if v in ("up", "down"):
            return 1 if v == "up" else -1
        return v

    @model_validator(mode="after")
    def _some_signal(self) -> "FeedbackIn":
        if all(getattr(self, f) is None for f in ("rating", "thumbs", "success", "correction", "comment")):
            raise ValueError("feedback needs at least one of rating, thumbs, success, correction, comment")
        return self


class ScoreIn(_Strict):
    trajectory_id: str | None = None
    name: str = Field(min_length=1, max_length=128)
    value: float
    source: ScoreSource = ScoreSource.env
    version: str | None = None
    author: str | None = None
    judge_model: str | None = None
    rationale: str | None = None
    idempotency_key: str | None = None


class TrajectoryIn(_Strict):
    id: str | None = Field(None, max_length=64, description="Client-chosen id; generated when absent.")
    idempotency_key: str | None = Field(None, max_length=128, description="Defaults to the id: a retry with the same key is a no-op.")
    project: str | None = None
    scenario: str | None = Field(None, max_length=256)
    group: str | None = Field(None, max_length=256, alias="group_id", description="Trajectories compared with each other.")
    window: str | None = Field(None, max_length=128, alias="window_id")
    agent: str | None = Field(None, max_length=128)
    source: Source = Source.production
    model: str | None = Field(None, max_length=256)
    model_version: str | None = Field(None, max_length=64)
    messages: list[Message] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    scores: dict[str, float] | None = None
    feedback: FeedbackIn | None = None
    created_at: dt.datetime | None = None

    def with_id(self) -> "TrajectoryIn":
        if self.id is None:
            self.id = uuid.uuid4().hex
        return self


class IngestBatch(_Strict):
    """One all-or-nothing batch: trajectories, late feedback and scores."""

    trajectories: list[TrajectoryIn] = Field(default_factory=list)
    feedback: list[FeedbackIn] = Field(default_factory=list)
    scores: list[ScoreIn] = Field(default_factory=list)

    @model_validator(mode="after")
    def _late_items_name_a_trajectory(self) -> "IngestBatch":
        for kind, items in (("feedback", self.feedback), ("scores", self.scores)):
            for i, item in enumerate(items):
                if not item.trajectory_id:
                    raise ValueError(f"{kind}[{i}].trajectory_id is required for feedback or scores sent on their own")
        return self


def format_validation_error(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Turn pydantic errors into (location, message) pairs like ``trajectories.0.messages.1.role``."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        problems.append((loc or "(root)", err["msg"]))
    return problems


def parse_batch(data: Any) -> IngestBatch:
    """Validate a raw batch, raising ValidationFailed that names every bad field."""
    try:
        return IngestBatch.model_validate(data)
    except ValidationError as exc:
        problems = format_validation_error(exc)
        raise ValidationFailed(_summary(problems), problems) from None


def parse_trajectory(data: Any, where: str = "") -> TrajectoryIn:
    try:
        return TrajectoryIn.model_validate(data)
    except ValidationError as exc:
        problems = format_validation_error(exc, where)
        raise ValidationFailed(_summary(problems), problems) from None


def _summary(problems: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{loc}: {msg}" for loc, msg in problems[:10])
    more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
    return f"Invalid input — {shown}{more}. Nothing was stored."


# -- JSON: the wire format's one encoder and decoder (in a module light enough for the app thread)

from learnloop.capture.encoding import dumps, dumps_str, loads, orjson  # noqa: E402,F401


def batch_from_json(body: bytes | str) -> IngestBatch:
    """Validate an ``IngestBatch`` JSON body (raises pydantic's ``ValidationError``).

    pydantic parses the JSON itself, straight into the models: no intermediate dicts and lists
    to allocate and collect (measured faster than ``orjson.loads`` + ``model_validate``).
    """
    return IngestBatch.model_validate_json(body)
