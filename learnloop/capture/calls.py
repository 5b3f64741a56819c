"""LLM calls recorded elsewhere (OTLP spans, exported logs) turned into the wire records the SDK sends.

An imported call is what ``wrap_openai`` sees of one ``chat.completions.create``: the request
messages, the answer, the model, the tools and the call's metadata (latency, usage, finish reason,
sampling parameters, error). One call alone becomes a trajectory as a wrapped call outside any
``learnloop.trajectory()`` does; several calls of one run become one trajectory as they would
inside one, with one ``llm_calls`` entry per call. Both go through the SDK's own recorder, so an
imported trajectory and a captured one look the same.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from learnloop.capture.openai_wrapper import _KEPT_PARAMS, _add_to_trajectory
from learnloop.capture.recorder import TrajectoryRecorder

KEPT_PARAMS = _KEPT_PARAMS
# The trajectory fields a run's attributes may set (documented keys, e.g. ``learnloop.scenario``).
RUN_FIELDS = ("scenario", "agent", "group", "source")


@dataclass
class LlmCall:
    """One chat completion as recorded by someone else. ``meta`` holds what the SDK keeps per call:
    latency_ms, usage (OpenAI's names), finish_reason, response_id, params, stream."""

    request: list[dict[str, Any]]
    answer: dict[str, Any] | None = None
    model: str | None = None
    tools: list[dict[str, Any]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    started: dt.datetime | None = None

    @property
    def has_content(self) -> bool:
        return bool(self.request) or self.answer is not None


def trajectory_record(
    calls: list[LlmCall],
    *,
    id: str,
    fields: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    scores: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The wire record for ``calls`` (in order), as the SDK would send it.

    ``fields`` sets scenario, agent, group and source; ``created_at`` is the first call's start
    (the record's time, not the import's); the window is left to the receiving end, which assigns
    it from that time. Raises ValidationFailed for a source the SDK refuses.
    """
    fields = {k: v for k, v in (fields or {}).items() if k in RUN_FIELDS and v is not None}
    base_meta = dict(metadata or {})
    if len(calls) == 1:
        # A wrapped call outside any trajectory: the call's metadata is the trajectory's.
        call = calls[0]
        rec = TrajectoryRecorder(
            None,  # type: ignore[arg-type]  # never submitted: to_record() is all that is used
            id=id,
            tags=tags,
            model=call.model,
            tools=call.tools,
            metadata={**base_meta, **call.meta},
            escape_unstorable=True,  # as wrap_openai records a call: model output is data
            **fields,
        )
        rec.messages.extend(call.request)
        if call.answer is not None:
            rec.messages.append(call.answer)
        if call.error is not None:
            rec.metadata["error"] = call.error
    else:
        rec = TrajectoryRecorder(None, id=id, tags=tags, metadata=base_meta, **fields)  # type: ignore[arg-type]
        for call in calls:
            meta = dict(call.meta)
            _add_to_trajectory(rec, call.request, call.answer, call.model, call.tools, meta, None)
            if call.error is not None:
                meta["error"] = call.error
    if scores:
        rec.scores.update(scores)
    record = rec.to_record()
    record.pop("window", None)
    started = next((c.started for c in calls if c.started is not None), None)
    if started is not None:
        record["created_at"] = started
    return record


def openai_tool(tool: Any) -> dict[str, Any] | None:
    """A tool definition in OpenAI's shape, from OpenAI's or the GenAI conventions' flat one
    (``{"type": "function", "name", "description", "parameters"}``)."""
    tool = maybe_json(tool)
    if not isinstance(tool, dict):
        return None
    if isinstance(tool.get("function"), dict):
        return tool
    name = tool.get("name")
    if not name:
        return None
    fn: dict[str, Any] = {"name": name}
    for key in ("description", "parameters", "strict"):
        value = maybe_json(tool.get(key)) if key == "parameters" else tool.get(key)
        if value is not None:
            fn[key] = value
    return {"type": tool.get("type") or "function", "function": fn}


def openai_tool_call(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    """One tool call in OpenAI's shape; arguments given as an object are stored as its JSON text."""
    if arguments is not None and not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    out: dict[str, Any] = {"type": "function", "function": {"name": name or "", "arguments": arguments or ""}}
    if call_id:
        out["id"] = str(call_id)
    return out


def maybe_json(value: Any) -> Any:
    """A JSON object or array sent as text (instrumentations often do) read back; other values as given."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def usage(prompt: Any, completion: Any, total: Any = None) -> dict[str, int] | None:
    """Token usage in OpenAI's names (what the SDK stores), from whichever counts are known."""
    out: dict[str, int] = {}
    for key, value in (("prompt_tokens", prompt), ("completion_tokens", completion), ("total_tokens", total)):
        number = _int(value)
        if number is not None:
            out[key] = number
    if "total_tokens" not in out and "prompt_tokens" in out and "completion_tokens" in out:
        out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    return out or None


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
