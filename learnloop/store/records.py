"""Validated input records: the wire format shared by the SDK, the HTTP API and JSONL import.

A JSONL line, an API item and an SDK record all have this shape::

    {"id"?, "scenario"?, "group"?, "agent"?, "source"?, "model"?, "messages": [...],
     "tools"?, "metadata"?, "tags"?, "scores"?: {name: value}, "feedback"?: {...}}
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Annotated, Any, Literal, NotRequired

import orjson
from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    ConfigDict,
    Field,
    FiniteFloat,
    Strict,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from learnloop.errors import (
    Unparsable,
    ValidationFailed,
    error_location,  # noqa: F401  (importable from here, as before)
    problems_text,
    validation_problems,
)
from learnloop.jsonio import (  # noqa: F401  (dumps, dumps_str, loads: importable from here, as before)
    MAX_DEPTH,
    NestedTooDeep,
    depth_problem,
    dumps,
    dumps_str,
    loads,
    short_path,
    too_deep,
)
from learnloop.store.models import ScoreSource, Source

# The records are TypedDicts, not pydantic models: pydantic validates them into plain dicts,
# which the store writes as they are. Building a model per trajectory and per message, then
# dumping them back to dicts for the JSON columns, cost four times the validation itself
# (measured: 15 µs against 4 µs for a three-message trajectory) on the capture hot path.

ROLES = ("system", "developer", "user", "assistant", "tool", "function")

_KEEP_EXTRA = ConfigDict(extra="allow")  # providers add their own keys to messages and tool calls
_STRICT = ConfigDict(extra="forbid")  # a misspelt field of ours is a mistake to report, not to drop


def _no_nones(d: dict[str, Any]) -> dict[str, Any]:
    # OpenAI SDK dumps carry explicit nulls ("name": null, "content": null beside tool calls);
    # they are stored as absent keys, one spelling for the same message.
    return {k: v for k, v in d.items() if v is not None} if None in d.values() else d


# -- values the store cannot keep ---------------------------------------------------------------
# Each is refused here, in the one schema every input path validates with (HTTP, JSONL, the SDK),
# so a record the database would refuse (or keep differently on SQLite and PostgreSQL) is a 422
# naming its field instead of a 500, a driver message, or a batch that can never be delivered.

_UTC = dt.UTC


def _storable_datetime(v: dt.datetime | None) -> dt.datetime | None:
    # Stored as UTC: a time whose conversion to UTC leaves the calendar (year 1 at +01:00, year
    # 9999 at -01:00) raised OverflowError deep in the store.
    if v is not None and v.tzinfo is not None:
        try:
            v.astimezone(_UTC)
        except OverflowError:
            raise ValueError(
                f"{v.isoformat()} is outside the range of a UTC timestamp "
                "(it must fall within the years 1 to 9999 once converted to UTC)"
            ) from None
    return v


# Text for a time: RFC 3339 (what the document promises), with the offset optional (UTC then) and
# a space allowed for the T. pydantic alone also took "0" and "2026-12-01" (a number, a day).
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}(:?\d{2})?)?")


def _date_time_text(v: Any) -> Any:
    """A time given as text, read as the datetime it spells; a number is refused (pydantic took it
    as Unix time: 0 was 1970)."""
    if isinstance(v, (int, float)):
        raise ValueError(f"{v!r} is a number; write the time as 2026-12-01T14:03:00Z (RFC 3339)")
    if not isinstance(v, str):
        return v
    problem = "not a date-time"
    if _DATE_TIME.fullmatch(v):
        try:
            return dt.datetime.fromisoformat(v)
        except ValueError as exc:
            problem = str(exc)
    raise ValueError(f"{v[:40]!r}: {problem}; write it as 2026-12-01T14:03:00Z (RFC 3339)")


_TIME_SCHEMA = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]}
StoredDateTime = Annotated[
    dt.datetime | None,
    BeforeValidator(_date_time_text),
    AfterValidator(_storable_datetime),
    WithJsonSchema(_TIME_SCHEMA),
]

# JSON's types as the document states them: pydantic alone also took 0 and 1 for false and true,
# true for a number and "5" for a number or an integer (an integer such as 5.0 stays one).
JsonBool = Annotated[bool, Strict()]
JsonNumber = Annotated[float, Strict()]  # an integer is a number


def _integer_not_bool_or_text(v: Any) -> Any:
    if isinstance(v, (bool, str)):
        raise ValueError(f"must be an integer, not {type(v).__name__}")
    return v


JsonInt = Annotated[int, BeforeValidator(_integer_not_bool_or_text)]

# NaN and the infinities break every statistic made of them (a mean of anything with NaN is NaN)
# and JSON has no spelling for them; a number too large for a float (1e999) reads as infinity.
Finite = Annotated[FiniteFloat, Strict()]

TEXT_RULE = (
    "Text must be storable the same way on every database: a NUL character (\\u0000) or a lone UTF-16 "
    "surrogate (half of a character, such as an emoji cut in two) anywhere in a "
    "record, keys included, is refused"
)


def _string_problem(s: str) -> str | None:
    if "\x00" in s:
        return (
            "holds a NUL character (\\u0000), which PostgreSQL cannot store "
            "(refused on every database alike); remove it"
        )
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (
                f"holds the lone UTF-16 surrogate {s[exc.start : exc.end]!r} (half of a character, e.g. "
                "an emoji cut in two), which is not valid Unicode; send valid UTF-8 or replace that character"
            )
    return None


def _walk_text(value: Any, path: tuple[str, ...]) -> tuple[str, str] | None:
    """The first string (or key) in ``value`` that cannot be stored, as (path, reason)."""
    if isinstance(value, str):
        problem = _string_problem(value)
        return (".".join(path), problem) if problem else None
    if isinstance(value, dict):
        for k, v in value.items():
            key = k if isinstance(k, str) else str(k)
            if isinstance(k, str):
                problem = _string_problem(k)
                if problem:
                    return (".".join((*path, repr(k))), f"this key {problem}")
            found = _walk_text(v, (*path, _printable(key)))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _walk_text(v, (*path, str(i)))
            if found:
                return found
    return None


def _printable(key: str) -> str:
    return key if _string_problem(key) is None else repr(key)


def _storable_text(record: Any) -> Any:
    """Refuse a record holding text no database keeps as sent: NUL, lone surrogates.

    One C-speed encode finds the usual record clean (orjson escapes NUL as ``\\u0000`` and
    refuses a lone surrogate); only a suspect record is walked, to name the field.
    """
    if orjson is not None:
        try:
            if b"\\u0000" not in orjson.dumps(record):
                return record
        except TypeError:  # a lone surrogate, or keys/values orjson does not take: walk it
            pass
    found = _walk_text(record, ())
    if found:
        path, reason = found
        raise PydanticCustomError("unstorable_text", "{reason}", {"reason": reason, "path": path})
    return record


def _within_depth(record: Any) -> Any:
    """Refuse a record nested deeper than ``MAX_DEPTH`` (a rule for input: rows stored before it
    stay readable). The walk visits containers only (measured cheaper than any check of the
    record's JSON, which costs with its text: benchmarks/bench_validation.py)."""
    path = too_deep(record)
    if path is not None:
        raise PydanticCustomError(
            "too_deep", "{reason}", {"reason": depth_problem(), "path": short_path(path)}
        )
    return record


# -- model output, stored losslessly --------------------------------------------------------------
# What a client sends is refused above when a database cannot hold it: the client can fix it. A model's
# own answer (served, or captured from a wrapped client) is data whatever it holds, and refusing it
# would lose the answer and every piece of feedback on it. So the capture of model output escapes
# such text instead, reversibly, and marks the record; the rules above still apply to the result.
#
# The escape (scheme ``learnloop-escape/1``), applied only to the strings (values or keys) that need
# it: a backslash becomes two, a NUL becomes ``\u0000``, and each lone UTF-16 surrogate (half of a
# character; also how Python holds bytes that were not valid UTF-8, with errors="surrogateescape")
# becomes ``\uXXXX`` (lowercase hex). The record's ``metadata.learnloop_escaped`` lists where:
# ``{"scheme": ..., "values": [path, ...], "keys": [path, ...]}``, a path being the list of keys and
# indexes that leads to the string (through keys as stored). ``unescape_record`` gives the original.

ESCAPE_SCHEME = "learnloop-escape/1"
ESCAPED_MARK = "learnloop_escaped"
_UNSTORABLE = re.compile(r"[\\\x00\ud800-\udfff]")
_ESCAPED = re.compile(r"\\(\\|u[0-9a-f]{4})")


def escape_text(text: str) -> str:
    """``text`` in the reversible escape (see above)."""
    return _UNSTORABLE.sub(lambda m: "\\\\" if m.group() == "\\" else f"\\u{ord(m.group()):04x}", text)


def unescape_text(text: str) -> str:
    """The original of an ``escape_text`` result."""
    return _ESCAPED.sub(lambda m: "\\" if m.group(1) == "\\" else chr(int(m.group(1)[1:], 16)), text)


def escape_unstorable(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` itself when every string in it can be stored; otherwise a copy with each string (or
    key) holding a NUL or a lone surrogate escaped, and the mark in ``metadata.learnloop_escaped``.

    For model output only (served answers, a wrapped client's calls): client input is refused instead.
    """
    try:
        if b"\\u0000" not in orjson.dumps(record, default=str):
            return record
    except TypeError:  # a lone surrogate (or a value orjson does not take): walk it
        pass
    values: list[list[str | int]] = []
    keys: list[list[str | int]] = []
    out = _escape_walk(record, [], values, keys)
    if not values and not keys:
        return record
    meta = dict(out.get("metadata") or {})
    meta[ESCAPED_MARK] = {"scheme": ESCAPE_SCHEME, "values": values, "keys": keys}
    out["metadata"] = meta
    return out


def _escape_walk(value: Any, path: list[str | int], values: list, keys: list) -> Any:
    if isinstance(value, str):
        if _string_problem(value) is None:
            return value
        values.append(list(path))
        return escape_text(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(k, str) and _string_problem(k) is not None:
                k = escape_text(k)
                keys.append([*path, k])
            out[k] = _escape_walk(v, [*path, k], values, keys)
        return out
    if isinstance(value, (list, tuple)):
        return [_escape_walk(v, [*path, i], values, keys) for i, v in enumerate(value)]
    return value


def unescape_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record as it was before ``escape_unstorable`` (a stored trajectory's dict: its ``metadata``
    holds the mark); a record without the mark is returned as it is."""
    mark = (record.get("metadata") or {}).get(ESCAPED_MARK)
    if not isinstance(mark, dict) or mark.get("scheme") != ESCAPE_SCHEME:
        return record
    out = json.loads(json.dumps(record, default=str))  # a deep copy in plain JSON types
    del out["metadata"][ESCAPED_MARK]
    for path in mark.get("values") or []:
        parent = _at(out, path[:-1])
        parent[path[-1]] = unescape_text(parent[path[-1]])
    for path in sorted(mark.get("keys") or [], key=len, reverse=True):  # deepest first: paths stay valid
        parent = _at(out, path[:-1])
        parent[unescape_text(path[-1])] = parent.pop(path[-1])
    return out


def _at(value: Any, path: list[str | int]) -> Any:
    for step in path:
        value = value[step]
    return value


class ToolCallFunction(TypedDict):
    __pydantic_config__ = _KEEP_EXTRA  # type: ignore[misc]
    name: Annotated[str, Field(min_length=1)]
    arguments: NotRequired[str | dict[str, Any]]


class ToolCall(TypedDict):
    __pydantic_config__ = _KEEP_EXTRA  # type: ignore[misc]
    id: NotRequired[str | None]
    type: NotRequired[str]
    function: ToolCallFunction


def _message_rules_schema(schema: dict[str, Any]) -> None:
    # The rules _message_problem enforces, said in the JSON schema too.
    content = {"not": {"type": "null"}}
    schema["anyOf"] = [
        {
            "required": ["role", "content"],
            "properties": {"role": {"enum": ["system", "developer", "user", "function"]}, "content": content},
        },
        {
            "required": ["role", "content", "tool_call_id"],
            "properties": {
                "role": {"const": "tool"},
                "content": content,
                "tool_call_id": {"type": "string", "minLength": 1},
            },
        },
        {"required": ["role", "content"], "properties": {"role": {"const": "assistant"}, "content": content}},
        {
            "required": ["role", "tool_calls"],
            "properties": {"role": {"const": "assistant"}, "tool_calls": {"type": "array", "minItems": 1}},
        },
    ]


class Message(TypedDict):
    """One OpenAI chat message. Unknown keys are kept (providers add their own). A 'tool' message
    names the call it answers (tool_call_id); every message but an assistant's calling tools has
    content."""

    __pydantic_config__ = ConfigDict(extra="allow", json_schema_extra=_message_rules_schema)  # type: ignore[misc]
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: NotRequired[str | list[dict[str, Any]] | None]
    name: NotRequired[str | None]
    tool_calls: NotRequired[list[ToolCall] | None]
    tool_call_id: NotRequired[str | None]


def _message_problem(m: Message) -> str | None:
    role = m["role"]
    if role == "tool" and not m.get("tool_call_id"):
        return "a 'tool' message needs 'tool_call_id' naming the call it answers"
    if role != "assistant" and m.get("content") is None:
        return f"a '{role}' message needs 'content'"
    if role == "assistant" and m.get("content") is None and not m.get("tool_calls"):
        return "an 'assistant' message needs 'content' or 'tool_calls'"
    return None


def _normalized(m: Message) -> Message:
    calls = m.get("tool_calls")
    if calls:
        m["tool_calls"] = [_tool_call_defaults(_no_nones(c)) for c in calls]  # type: ignore[arg-type]
    return _no_nones(m)  # type: ignore[return-value]


def _tool_call_defaults(call: dict[str, Any]) -> dict[str, Any]:
    # Stored complete, as the OpenAI format spells them: chat templates read both keys.
    call.setdefault("type", "function")
    call["function"].setdefault("arguments", "")
    return call


def _check_message(m: Message) -> Message:
    problem = _message_problem(m)
    if problem:
        raise ValueError(problem)
    return _normalized(m)


def _check_messages(messages: list[Message]) -> list[Message]:
    """The per-message rules pydantic's schema cannot express, for a whole list in one call
    (a call from pydantic-core into Python per message cost more than validating the message)."""
    for i, m in enumerate(messages):
        # Most messages are plain text with no nulls: nothing to check or normalise.
        if m.get("content") is None or m["role"] == "tool" or "tool_calls" in m or None in m.values():
            problem = _message_problem(m)
            if problem:
                raise ValueError(f"message {i}: {problem}")
            messages[i] = _normalized(m)
    return messages


CheckedMessage = Annotated[Message, AfterValidator(_check_message), AfterValidator(_within_depth)]


def _thumbs(v: Any) -> Any:
    if isinstance(v, bool):
        return 1 if v else -1
    if v in ("up", "down"):
        return 1 if v == "up" else -1
    return v


FEEDBACK_SIGNALS = ("rating", "thumbs", "success", "correction", "comment")


def _one_signal_schema(schema: dict[str, Any]) -> None:
    # The rule _some_signal enforces, said in the JSON schema too: one signal present and not null.
    schema["anyOf"] = [
        {"required": [k], "properties": {k: {"not": {"type": "null"}}}} for k in FEEDBACK_SIGNALS
    ]


class FeedbackIn(TypedDict):
    """Feedback on one trajectory. At least one signal (rating, thumbs, success, correction,
    comment) must be present and not null."""

    __pydantic_config__ = ConfigDict(extra="forbid", json_schema_extra=_one_signal_schema)  # type: ignore[misc]
    trajectory_id: NotRequired[
        Annotated[
            str | None,
            Field(
                max_length=64, description="Set by the caller for late feedback; implied inside a trajectory."
            ),
        ]
    ]
    idempotency_key: NotRequired[Annotated[str | None, Field(max_length=128)]]
    rating: NotRequired[
        Annotated[Finite | None, Field(description="Numeric rating, any scale; scoring normalises it.")]
    ]
    thumbs: NotRequired[
        Annotated[
            Literal[-1, 1] | None,
            BeforeValidator(_thumbs),
            WithJsonSchema(
                {
                    "anyOf": [
                        {"enum": [-1, 1]},
                        {"type": "boolean"},
                        {"enum": ["up", "down"]},
                        {"type": "null"},
                    ]
                }
            ),
            Field(description="+1 thumbs up, -1 thumbs down (true/false and 'up'/'down' are taken too)."),
        ]
    ]
    success: NotRequired[Annotated[JsonBool | None, Field(description="Whether the task succeeded.")]]
    correction: NotRequired[
        Annotated[
            str | dict[str, Any] | None,
            Field(description="The corrected answer (text or assistant message)."),
        ]
    ]
    comment: NotRequired[str | None]
    author: NotRequired[Annotated[str | None, Field(max_length=128)]]
    metadata: NotRequired[dict[str, Any]]
    created_at: NotRequired[StoredDateTime]


def _some_signal(f: FeedbackIn) -> FeedbackIn:
    if all(f.get(k) is None for k in FEEDBACK_SIGNALS):
        raise ValueError("feedback needs at least one of rating, thumbs, success, correction, comment")
    return f


CheckedFeedback = Annotated[
    FeedbackIn, AfterValidator(_some_signal), AfterValidator(_within_depth), AfterValidator(_storable_text)
]


class ScoreIn(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    trajectory_id: NotRequired[Annotated[str | None, Field(max_length=64)]]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    value: Finite
    source: NotRequired[ScoreSource]
    version: NotRequired[Annotated[str | None, Field(max_length=64)]]
    author: NotRequired[Annotated[str | None, Field(max_length=128)]]
    judge_model: NotRequired[Annotated[str | None, Field(max_length=256)]]
    rationale: NotRequired[str | None]
    idempotency_key: NotRequired[Annotated[str | None, Field(max_length=256)]]


CheckedScore = Annotated[ScoreIn, AfterValidator(_storable_text)]


def _text(max_length: int, *aliases: str, description: str | None = None) -> Any:
    alias = AliasChoices(*aliases) if aliases else None
    return Annotated[
        str | None, Field(max_length=max_length, validation_alias=alias, description=description)
    ]


class TrajectoryIn(TypedDict):
    """One trajectory as sent: a JSONL line, an API item, an SDK record. Absent keys take their
    defaults when stored (a generated id, source ``production``, empty metadata and tags)."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    id: NotRequired[_text(64, description="Client-chosen id; generated when absent.")]  # type: ignore[valid-type]
    idempotency_key: NotRequired[
        _text(128, description="Defaults to the id: a retry with the same key is a no-op.")
    ]  # type: ignore[valid-type]
    project: NotRequired[_text(128)]  # type: ignore[valid-type]
    scenario: NotRequired[_text(256)]  # type: ignore[valid-type]
    group: NotRequired[_text(256, "group", "group_id", description="Trajectories compared with each other.")]  # type: ignore[valid-type]
    window: NotRequired[_text(128, "window", "window_id")]  # type: ignore[valid-type]
    agent: NotRequired[_text(128)]  # type: ignore[valid-type]
    source: NotRequired[Source]
    model: NotRequired[_text(256)]  # type: ignore[valid-type]
    model_version: NotRequired[_text(64)]  # type: ignore[valid-type]
    messages: Annotated[list[Message], Field(min_length=1), AfterValidator(_check_messages)]
    tools: NotRequired[list[dict[str, Any]] | None]
    metadata: NotRequired[dict[str, Any]]
    tags: NotRequired[list[str]]
    scores: NotRequired[dict[Annotated[str, Field(min_length=1, max_length=128)], Finite] | None]
    feedback: NotRequired[CheckedFeedback | None]
    created_at: NotRequired[StoredDateTime]


CheckedTrajectory = Annotated[TrajectoryIn, AfterValidator(_within_depth), AfterValidator(_storable_text)]


def _late_items_schema(schema: dict[str, Any]) -> None:
    # The rule _late_items_name_a_trajectory enforces, said in the JSON schema too.
    named = {
        "required": ["trajectory_id"],
        "properties": {"trajectory_id": {"type": "string", "minLength": 1}},
    }
    for kind in ("feedback", "scores"):
        part = schema.get("properties", {}).get(kind)
        if part and "items" in part:
            part["items"] = {"allOf": [part["items"], named]}


class IngestBatch(TypedDict, total=False):
    """One all-or-nothing batch: trajectories, late feedback and scores (feedback and scores sent on
    their own name the trajectory they are about)."""

    __pydantic_config__ = ConfigDict(extra="forbid", json_schema_extra=_late_items_schema)  # type: ignore[misc]
    trajectories: list[CheckedTrajectory]
    feedback: list[CheckedFeedback]
    scores: list[CheckedScore]


def _late_items_name_a_trajectory(batch: IngestBatch) -> IngestBatch:
    for kind in ("feedback", "scores"):
        for i, item in enumerate(batch.get(kind) or ()):  # type: ignore[attr-defined]
            if not item.get("trajectory_id"):
                raise ValueError(
                    f"{kind}[{i}].trajectory_id is required for feedback or scores sent on their own"
                )
    return batch


def _repeats_agree(batch: IngestBatch) -> IngestBatch:
    """An id (or idempotency key) repeated within one batch must carry the same content: an
    identical repeat is a duplicate (a retry), a different one a mistake that would otherwise
    keep whichever copy came first."""
    for kind, keys in (
        ("trajectories", ("id", "idempotency_key")),
        ("feedback", ("idempotency_key",)),
        ("scores", ("idempotency_key",)),
    ):
        items = batch.get(kind) or ()  # type: ignore[attr-defined]
        if len(items) < 2:
            continue
        for key in keys:
            first: dict[Any, int] = {}
            for i, item in enumerate(items):
                value = item.get(key)
                if value is None:
                    continue
                j = first.setdefault(value, i)
                if j != i and items[j] != item:
                    raise PydanticCustomError(
                        "conflicting_repeat",
                        "{kind}.{i} repeats the {key} {value} of {kind}.{j} with different content; "
                        "one {key} is one record (an identical repeat is a harmless duplicate)",
                        {
                            "kind": kind,
                            "i": i,
                            "j": j,
                            "key": key,
                            "value": repr(value)[:80],
                            "path": f"{kind}.{i}.{key}",
                        },
                    )
    return batch


CheckedBatch = Annotated[
    IngestBatch, AfterValidator(_late_items_name_a_trajectory), AfterValidator(_repeats_agree)
]

BATCH: TypeAdapter[IngestBatch] = TypeAdapter(CheckedBatch)
TRAJECTORY: TypeAdapter[TrajectoryIn] = TypeAdapter(CheckedTrajectory)
MESSAGE: TypeAdapter[Message] = TypeAdapter(CheckedMessage)
FEEDBACK: TypeAdapter[FeedbackIn] = TypeAdapter(CheckedFeedback)


# The names other modules import; the one definition lives beside the domain errors.
format_validation_error = validation_problems


def parse_batch(data: Any) -> IngestBatch:
    """Validate a raw batch, raising ValidationFailed that names every bad field."""
    try:
        return BATCH.validate_python(data)
    except ValidationError as exc:
        problems = format_validation_error(exc)
        raise ValidationFailed(_summary(problems), problems) from None


def parse_trajectory(data: Any, where: str = "") -> TrajectoryIn:
    try:
        return TRAJECTORY.validate_python(data)
    except ValidationError as exc:
        problems = format_validation_error(exc, where)
        raise ValidationFailed(_summary(problems), problems) from None


def _summary(problems: list[tuple[str, str]]) -> str:
    return f"Invalid input — {problems_text(problems)}. Nothing was stored."


def batch_from_json(body: bytes | str) -> IngestBatch:
    """Validate an ``IngestBatch`` JSON body (raises pydantic's ``ValidationError``).

    pydantic parses the JSON itself, straight into the validated dicts (measured faster than
    ``orjson.loads`` + ``validate_python``).
    """
    return BATCH.validate_json(body)


# Any JSON body a route reads nests at most this deep: pydantic's parser stops there, and what is
# read the slower way (see parse_json_body) is held to the same. Records inside have their own,
# smaller limit (MAX_DEPTH).
BODY_MAX_DEPTH = 200


def parse_json_body(adapter: TypeAdapter[Any], body: bytes, what: str = "request body") -> Any:
    """Validate a JSON body with ``adapter``: Unparsable (400) when it is not JSON at all,
    ValidationFailed (422) naming each bad field otherwise, and for any text that cannot be stored
    (NUL, a lone surrogate) or nesting past ``BODY_MAX_DEPTH``."""
    try:
        result = adapter.validate_json(body)
    except ValidationError as exc:
        if not any(e["type"] == "json_invalid" for e in exc.errors()):
            problems = format_validation_error(exc)
            raise ValidationFailed(_summary(problems), problems) from None
        reason = exc.errors()[0]["msg"]
    else:
        if b"\\u0000" in body:  # JSON can only spell a NUL as this escape: a rare body, read again
            _refuse_unstorable_text(loads(body))
        return result
    # pydantic's parser refuses some JSON the others read (the escape of a lone surrogate, nesting
    # past its 200 levels); read it that way, so that what is wrong with it is named like any other
    # bad value (too deep: the field, by the depth rule).
    try:
        data = loads(body)
    except NestedTooDeep as exc:
        loc = short_path(exc.path) or "(root)"
        raise ValidationFailed(
            f"Invalid input — {loc}: {exc.msg}. Nothing was stored.", [(loc, exc.msg)]
        ) from None
    except json.JSONDecodeError:
        raise Unparsable(f"The {what} is not valid JSON ({reason}). Nothing was stored.") from None
    except (ValueError, UnicodeDecodeError):
        raise Unparsable(f"The {what} is not valid JSON ({reason}). Nothing was stored.") from None
    path = too_deep(data, BODY_MAX_DEPTH)
    if path is not None:  # what the fast path's parser refuses, refused alike, naming the field
        loc = short_path(path)
        problem = depth_problem(BODY_MAX_DEPTH, "a request body")
        raise ValidationFailed(f"Invalid input — {loc}: {problem}. Nothing was stored.", [(loc, problem)])
    try:
        result = adapter.validate_python(data)
    except ValidationError as exc:
        problems = format_validation_error(exc)
        raise ValidationFailed(_summary(problems), problems) from None
    _refuse_unstorable_text(data)
    return result


def _refuse_unstorable_text(data: Any) -> None:
    """The text rule for any body (records check it themselves, naming the record's field): a
    NUL or a lone surrogate anywhere in a job's payload or a version's note cannot be stored either."""
    found = _walk_text(data, ())
    if found:
        problems = [(found[0] or "(root)", found[1])]
        raise ValidationFailed(_summary(problems), problems)


def storable_id(value: str, max_length: int = 64) -> str | None:
    """Why ``value`` cannot be a trajectory id (None when it can): the rule the records follow."""
    if len(value) > max_length:
        return f"longer than {max_length} characters"
    return _string_problem(value)
