"""OTLP traces to trajectories: the GenAI spans an instrumented app already exports, mapped to the
wire records the SDK sends.

Decoding reads an OTLP ``ExportTraceServiceRequest`` (protobuf, or the OTLP/JSON encoding with its
hex ids) with the official ``opentelemetry-proto`` classes into plain ``Span`` objects; a span
without a valid trace or span id refuses the whole export. Mapping then:

* finds the LLM calls: a span whose ``gen_ai.operation.name`` is a chat or completion, whose
  ``openinference.span.kind`` is ``LLM``, or (older instrumentations) that carries prompt and
  completion attributes. Every other span (HTTP, database, tool, agent spans) is ignored and counted.
* reads each call's messages in whichever style the instrumentation wrote them: the current
  GenAI conventions' ``gen_ai.input.messages`` / ``gen_ai.output.messages`` /
  ``gen_ai.system_instructions`` (as span attributes or on the
  ``gen_ai.client.inference.operation.details`` event), the older per-message events
  (``gen_ai.user.message``, ``gen_ai.choice``, ...), the attribute style
  ``gen_ai.prompt.N.*`` / ``gen_ai.completion.N.*``, or OpenInference's
  ``llm.input_messages.N.message.*`` / ``llm.output_messages.N.message.*``; with the tools, the
  model, usage, sampling parameters, latency (the span's duration) and the error (status ERROR).
* makes the LLM calls of one trace one trajectory (one call: the trajectory of a single wrapped
  call; several: one ``llm_calls`` entry per call, as inside ``learnloop.trajectory()``). An
  exporter sends spans as they end, so a run's calls often arrive exports before its root span:
  ``store_export`` holds every call (``store.otlp_calls``) and stores a trace's run when the export
  holding its root span (no parent, or a remote one) arrives; ``flush_overdue`` stores the runs
  whose root never comes. The trajectory's id is ``otlp-<trace id>-<span id of its first call>``,
  and a span taken once is never taken again: a resent export stores nothing twice.
* takes scenario, agent, group, source, tags and metadata from the documented ``learnloop.*``
  attributes (ATTRIBUTES), resource first, then the calls' spans, then the trace's root span.

An LLM call span that cannot become a trajectory (no message content was recorded, a message the
store refuses) is rejected on its own and reported (OTLP's partial success); the others are kept.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from learnloop.capture.calls import (
    KEPT_PARAMS,
    LlmCall,
    maybe_json,
    openai_tool,
    openai_tool_call,
    trajectory_record,
    usage,
)
from learnloop.errors import LearnloopError, Unparsable, ValidationFailed, problems_text
from learnloop.store.db import Database
from learnloop.store.records import TRAJECTORY, format_validation_error
from learnloop.store.trajectories import DEFAULT_HOLDOUT_FRACTION, ingest
from learnloop.windows import fill_windows

# The documented attributes (on the resource, a call's span or the trace's root span).
ATTRIBUTES = {
    "learnloop.scenario": "scenario",
    "learnloop.agent": "agent",
    "learnloop.group": "group",
    "learnloop.source": "source",
    "learnloop.tags": "tags (a list of strings, or one string of comma-separated tags)",
    "learnloop.metadata.<key>": "metadata[<key>]",
}
_FIELD_KEYS = {"learnloop.scenario": "scenario", "learnloop.agent": "agent", "learnloop.group": "group"}
_FIELD_KEYS["learnloop.source"] = "source"
_METADATA_PREFIX = "learnloop.metadata."

# Operations that are one model call; others (embeddings, execute_tool, invoke_agent) are not.
LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "completion"})
_MESSAGE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
_DETAILS_EVENT = "gen_ai.client.inference.operation.details"
_SEMCONV_PARAMS = {
    "gen_ai.request.temperature": "temperature",
    "gen_ai.request.top_p": "top_p",
    "gen_ai.request.max_tokens": "max_tokens",
    "gen_ai.request.seed": "seed",
    "gen_ai.request.presence_penalty": "presence_penalty",
    "gen_ai.request.frequency_penalty": "frequency_penalty",
    "gen_ai.request.stop_sequences": "stop",
    "gen_ai.request.choice.count": "n",
}
STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
# Span.flags bits (OTLP 1.1): whether the parent is known to be remote, and whether it is.
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
NO_CONTENT = (
    "an LLM call span without message content; turn on the instrumentation's content capture "
    "(OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true for the OpenTelemetry instrumentations, "
    "TRACELOOP_TRACE_CONTENT=true for OpenLLMetry; OpenInference records it unless "
    "OPENINFERENCE_HIDE_INPUTS/OUTPUTS is set)"
)


@dataclass(slots=True)
class Span:
    """One span, decoded: ids in lower-case hex, attributes as plain Python values."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int = 0
    status_message: str = ""
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str | None = None
    remote_parent: bool = False

    @property
    def local_root(self) -> bool:
        """No parent, or a parent in another process: the top of this service's part of the trace."""
        return self.parent_span_id is None or self.remote_parent


# -- decoding -------------------------------------------------------------------------------


def decode_protobuf(body: bytes) -> list[Span]:
    """The spans of a protobuf ``ExportTraceServiceRequest``; Unparsable or ValidationFailed (400)."""
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise Unparsable(
            f"The body is not a protobuf OTLP ExportTraceServiceRequest ({exc}). Nothing was stored."
        ) from None
    _refuse_old_protobuf(request)
    return spans_of(request)


def decode_json(body: bytes | str) -> list[Span]:
    """The spans of an OTLP/JSON ``ExportTraceServiceRequest`` (ids in hex, as OTLP/JSON writes them)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unparsable(f"The body is not valid JSON ({exc}). Nothing was stored.") from None
    return spans_of(request_from_json(data))


def request_from_json(data: Any, where: str = "") -> Any:
    """An ``ExportTraceServiceRequest`` from parsed OTLP/JSON; ValidationFailed names what is wrong."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    at = f"{where}: " if where else ""
    if not isinstance(data, dict):
        raise ValidationFailed(
            f"{at}expected an OTLP ExportTraceServiceRequest object "
            f'({{"resourceSpans": [...]}}), got {type(data).__name__}. Nothing was stored.'
        )
    problems: list[tuple[str, str]] = []
    for i, rs in enumerate(_list(data, "resourceSpans", "resource_spans")):
        if not isinstance(rs, dict):
            continue
        if "instrumentationLibrarySpans" in rs or "instrumentation_library_spans" in rs:
            raise ValidationFailed(
                f"{at}resourceSpans[{i}] holds instrumentationLibrarySpans: an OTLP version before 0.19 "
                "(2022). This server reads OTLP 1.x (scopeSpans); update the exporter. Nothing was stored.",
                [(f"resourceSpans[{i}].instrumentationLibrarySpans", "OTLP before 0.19 is not read")],
            )
        for j, ss in enumerate(_list(rs, "scopeSpans", "scope_spans")):
            if not isinstance(ss, dict):
                continue
            for k, span in enumerate(_list(ss, "spans")):
                if isinstance(span, dict):
                    _hex_ids_to_base64(span, f"resourceSpans[{i}].scopeSpans[{j}].spans[{k}]", problems)
    if problems:
        raise ValidationFailed(_summary(problems, where), problems)
    request = ExportTraceServiceRequest()
    try:
        # OTLP/JSON receivers ignore fields they do not know (newer versions add some).
        json_format.ParseDict(data, request, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ValidationFailed(
            f"{at}not an OTLP ExportTraceServiceRequest: {exc}. Nothing was stored.",
            [("body", str(exc))],
        ) from None
    return request


def _list(d: dict[str, Any], *keys: str) -> list[Any]:
    for key in keys:
        value = d.get(key)
        if isinstance(value, list):
            return value
    return []


def _hex_ids_to_base64(span: dict[str, Any], where: str, problems: list[tuple[str, str]]) -> None:
    # OTLP/JSON writes ids as hex; the protobuf JSON mapping the parser follows reads bytes as base64.
    def convert(d: dict[str, Any], loc: str) -> None:
        for key in ("traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id"):
            value = d.get(key)
            if value is None or value == "":
                continue
            try:
                d[key] = base64.b64encode(bytes.fromhex(value)).decode() if isinstance(value, str) else value
            except ValueError:
                problems.append((f"{loc}.{key}", f"{str(value)[:40]!r} is not hex (OTLP/JSON ids are hex)"))

    convert(span, where)
    for n, link in enumerate(span.get("links") or ()):
        if isinstance(link, dict):
            convert(link, f"{where}.links[{n}]")


def _refuse_old_protobuf(request: Any) -> None:
    # Before OTLP 0.19, spans sat in field 1000 (instrumentation_library_spans); a 1.x parser keeps it
    # as an unknown field, so an old exporter's spans would vanish without a word.
    from google.protobuf.unknown_fields import UnknownFieldSet

    for i, rs in enumerate(request.resource_spans):
        if not rs.scope_spans and any(f.field_number == 1000 for f in UnknownFieldSet(rs)):
            raise ValidationFailed(
                f"resource_spans[{i}] holds instrumentation_library_spans: an OTLP version before 0.19 "
                "(2022). This server reads OTLP 1.x (scope_spans); update the exporter. Nothing was stored.",
                [(f"resource_spans[{i}]", "OTLP before 0.19 is not read")],
            )


def spans_of(request: Any, where: str = "") -> list[Span]:
    """The spans of a decoded ``ExportTraceServiceRequest``. Every span needs a 16-byte trace id and
    an 8-byte span id (not all zero); otherwise ValidationFailed names each bad one."""
    spans: list[Span] = []
    problems: list[tuple[str, str]] = []
    for i, rs in enumerate(request.resource_spans):
        resource = attributes(rs.resource.attributes)
        for j, ss in enumerate(rs.scope_spans):
            scope = ss.scope.name or None
            for k, s in enumerate(ss.spans):
                loc = f"resource_spans[{i}].scope_spans[{j}].spans[{k}]"
                bad = _id_problem(s.trace_id, 16, "trace_id") or _id_problem(s.span_id, 8, "span_id")
                if not bad and s.parent_span_id and len(s.parent_span_id) != 8:
                    bad = ("parent_span_id", f"is {len(s.parent_span_id)} bytes; a span id is 8")
                if bad:
                    problems.append((f"{loc}.{bad[0]}", bad[1]))
                    continue
                spans.append(
                    Span(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex() if s.parent_span_id else None,
                        name=s.name,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        attributes=attributes(s.attributes),
                        events=[(e.name, attributes(e.attributes)) for e in s.events],
                        status_code=s.status.code,
                        status_message=s.status.message,
                        resource=resource,
                        scope=scope,
                        remote_parent=bool(s.parent_span_id)
                        and s.flags & (_HAS_IS_REMOTE | _IS_REMOTE) == (_HAS_IS_REMOTE | _IS_REMOTE),
                    )
                )
    if problems:
        raise ValidationFailed(_summary(problems, where), problems)
    return spans


def _id_problem(value: bytes, size: int, name: str) -> tuple[str, str] | None:
    if not value:
        return name, f"is missing (every span needs its {size}-byte {name})"
    if len(value) != size:
        return name, f"is {len(value)} bytes; a {name} is {size}"
    if not any(value):
        return name, "is all zeros, which OTLP defines as invalid"
    return None


def _summary(problems: list[tuple[str, str]], where: str = "") -> str:
    at = f"{where}: " if where else ""
    return f"{at}invalid OTLP export — {problems_text(problems)}. Nothing was stored."


def attributes(kvs: Iterable[Any]) -> dict[str, Any]:
    """OTLP ``KeyValue`` list to a dict of plain values (arrays to lists, key-value lists to dicts)."""
    return {kv.key: any_value(kv.value) for kv in kvs}


def any_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attributes(v.kvlist_value.values)
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return getattr(v, kind)


# -- mapping --------------------------------------------------------------------------------

# The attributes a run's fields are read from (see run_fields): all a held call needs to keep.
_RUN_KEYS = frozenset({"gen_ai.agent.name", "tag.tags", "gen_ai.conversation.id", "session.id", "user.id"})


def _run_attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if k.startswith("learnloop.") or k in _RUN_KEYS}


@dataclass
class CallSpan:
    """One LLM call span, reduced to what its trajectory needs: the call, the attributes the run's
    fields come from (its resource's and its own), where it came from. Held as JSON while its run
    is incomplete (``row``/``from_row``)."""

    trace_id: str
    span_id: str
    start_ns: int
    call: LlmCall
    resource: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    service: str | None = None
    scope: str | None = None

    def row(self) -> dict[str, Any]:
        c = self.call
        held = {
            "start_ns": self.start_ns,
            "request": c.request,
            "answer": c.answer,
            "model": c.model,
            "tools": c.tools,
            "meta": c.meta,
            "error": c.error,
            "started": c.started.isoformat() if c.started else None,
            "resource": self.resource,
            "attrs": self.attrs,
            "service": self.service,
            "scope": self.scope,
        }
        return {"trace_id": self.trace_id, "span_id": self.span_id, "call": held}

    @classmethod
    def from_row(cls, trace_id: str, span_id: str, held: dict[str, Any]) -> CallSpan:
        started = held.get("started")
        call = LlmCall(
            request=held.get("request") or [],
            answer=held.get("answer"),
            model=held.get("model"),
            tools=held.get("tools"),
            meta=held.get("meta") or {},
            error=held.get("error"),
            started=dt.datetime.fromisoformat(started) if started else None,
        )
        return cls(
            trace_id,
            span_id,
            int(held.get("start_ns") or 0),
            call,
            held.get("resource") or {},
            held.get("attrs") or {},
            held.get("service"),
            held.get("scope"),
        )


@dataclass
class Mapped:
    """What an export holds: its LLM calls by trace, the traces whose root span it holds (with the
    root's attributes), and the count of every span's fate."""

    calls: dict[str, list[CallSpan]] = field(default_factory=dict)
    roots: dict[str, dict[str, Any]] = field(default_factory=dict)
    spans: int = 0
    llm_spans: int = 0
    ignored: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (span id, reason)

    def rejection_message(self, limit: int = 10) -> str:
        """OTLP partial success's ``error_message``: which spans were refused and why."""
        if not self.rejected:
            return ""
        shown = "; ".join(f"span {sid}: {why}" for sid, why in self.rejected[:limit])
        more = f" (and {len(self.rejected) - limit} more)" if len(self.rejected) > limit else ""
        return (
            f"{len(self.rejected)} LLM call span(s) not stored: {shown}{more}. "
            f"{self.ignored} span(s) that are not LLM calls ignored."
        )


def map_spans(spans: list[Span]) -> Mapped:
    """Find the LLM calls among decoded spans and map each (see the module doc); a call that cannot
    be stored on its own is rejected here, with the reason."""
    out = Mapped(spans=len(spans))
    for span in spans:
        if span.local_root:
            out.roots.setdefault(span.trace_id, _run_attributes(span.attributes))
        if not is_llm_call(span):
            out.ignored += 1
            continue
        out.llm_spans += 1
        try:
            call = llm_call(span)
        except LearnloopError as exc:
            out.rejected.append((span.span_id, str(exc)))
            continue
        if not call.has_content:
            out.rejected.append((span.span_id, NO_CONTENT))
            continue
        item = CallSpan(
            span.trace_id,
            span.span_id,
            span.start_ns,
            call,
            _run_attributes(span.resource),
            _run_attributes(span.attributes),
            span.resource.get("service.name"),
            span.scope,
        )
        try:
            run_record(span.trace_id, [item], None)  # what the store would refuse, said now
        except LearnloopError as exc:
            out.rejected.append((span.span_id, str(exc)))
            continue
        out.calls.setdefault(span.trace_id, []).append(item)
    return out


def trajectories(mapped: Mapped) -> list[dict[str, Any]]:
    """Every trace's calls as one trajectory: for a finished record (a file), where no root is awaited."""
    records = []
    for trace_id, calls in mapped.calls.items():
        records.extend(build_run(trace_id, calls, mapped.roots.get(trace_id), mapped.rejected))
    return records


def build_run(
    trace_id: str,
    calls: list[CallSpan],
    root: dict[str, Any] | None,
    rejected: list[tuple[str, str]],
) -> list[dict[str, Any]]:
    """The trajectory of one trace's calls (none or one); calls that cannot join it go to ``rejected``."""
    calls = sorted({c.span_id: c for c in calls}.values(), key=lambda c: (c.start_ns, c.span_id))
    if not calls:
        return []
    try:
        return [run_record(trace_id, calls, root)]
    except LearnloopError as exc:  # the run's own fields are refused (each call passed alone)
        rejected.extend((c.span_id, str(exc)) for c in calls)
        return []


def run_record(trace_id: str, calls: list[CallSpan], root: dict[str, Any] | None) -> dict[str, Any]:
    """One trajectory for the LLM calls of one trace (in order), validated; ValidationFailed says why not."""
    first = calls[0]
    fields, tags, metadata = run_fields([first.resource, *(c.attrs for c in calls), root or {}])
    otlp: dict[str, Any] = {"trace_id": trace_id, "span_id": first.span_id}
    if first.service:
        otlp["service"] = first.service
    if first.scope:
        otlp["scope"] = first.scope
    metadata["otlp"] = otlp
    llm_calls = [c.call for c in calls]
    if len(calls) > 1:
        llm_calls = [replace(c.call, meta={**c.call.meta, "span_id": c.span_id}) for c in calls]
    record = trajectory_record(
        llm_calls, id=f"otlp-{trace_id}-{first.span_id}", fields=fields, tags=tags, metadata=metadata
    )
    try:
        return TRAJECTORY.validate_python(record)
    except ValidationError as exc:
        problems = format_validation_error(exc)
        raise ValidationFailed(problems_text(problems), problems) from None


# -- storing: runs assembled when their root span arrives -------------------------------------


@dataclass
class Stored:
    """What storing an export did."""

    trajectories: int = 0
    duplicates: int = 0
    held: int = 0  # calls now waiting for their trace's root span


def store_export(
    db: Database,
    mapped: Mapped,
    *,
    project: str = "default",
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    window: str = "1h",
) -> Stored:
    """Store an export's calls in one transaction. Each trace whose root span the export holds
    becomes one trajectory of all its calls so far (from earlier exports too); the calls of other
    traces wait for theirs (``flush_overdue`` stores those whose root never comes). A span taken
    before is not taken again, so a resent export, whole or in parts, stores nothing twice."""
    from learnloop.store import otlp_calls

    out = Stored()
    with db.session() as session:
        known = otlp_calls.spans_of(session, {*mapped.calls, *mapped.roots})
        waiting = [k for k, tid in known.items() if tid is None and k[0] in mapped.roots]
        earlier = otlp_calls.held_calls(session, waiting) if waiting else {}
        runs: dict[str, list[CallSpan]] = {}
        for (trace_id, span_id), held in earlier.items():
            runs.setdefault(trace_id, []).append(CallSpan.from_row(trace_id, span_id, held))
        fresh = [c for calls in mapped.calls.values() for c in calls if (c.trace_id, c.span_id) not in known]
        for c in fresh:
            if c.trace_id in mapped.roots:
                runs.setdefault(c.trace_id, []).append(c)
        records, taken_by = [], {}
        for trace_id, calls in runs.items():
            run = build_run(trace_id, calls, mapped.roots.get(trace_id), mapped.rejected)
            taken_by[trace_id] = run[0]["id"] if run else ""  # "": refused, not to be tried again
            records.extend(run)
        otlp_calls.add(
            session,
            [
                {
                    "trace_id": c.trace_id,
                    "span_id": c.span_id,
                    "call": {},
                    "trajectory_id": taken_by[c.trace_id],
                }
                if c.trace_id in taken_by
                else c.row()
                for c in fresh
            ],
        )
        otlp_calls.assembled(session, [(t, s, taken_by[t]) for t, s in earlier])
        out.held = sum(1 for c in fresh if c.trace_id not in taken_by)
        _ingest(session, records, out, project, holdout_fraction, window)
    return out


def flush_overdue(
    db: Database,
    timeout: dt.timedelta,
    *,
    project: str = "default",
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    window: str = "1h",
    now: dt.datetime | None = None,
) -> Stored:
    """Store the calls that have waited longer than ``timeout`` for their trace's root span (it
    is in another service, or never ended), one trajectory per trace; forget old taken calls."""
    from learnloop.store import otlp_calls
    from learnloop.store.models import utcnow

    out = Stored()
    now = now or utcnow()
    with db.session() as session:
        traces = otlp_calls.overdue_traces(session, now - timeout)
        waiting = [k for k, tid in otlp_calls.spans_of(session, traces).items() if tid is None]
        runs: dict[str, list[CallSpan]] = {}
        for (trace_id, span_id), held in otlp_calls.held_calls(session, waiting).items():
            runs.setdefault(trace_id, []).append(CallSpan.from_row(trace_id, span_id, held))
        records: list[dict[str, Any]] = []
        taken = []
        for trace_id, calls in runs.items():
            run = build_run(trace_id, calls, None, [])
            taken.extend((trace_id, c.span_id, run[0]["id"] if run else "") for c in calls)
            records.extend(run)
        otlp_calls.assembled(session, taken)
        _ingest(session, records, out, project, holdout_fraction, window)
        otlp_calls.forget_taken(session, now)
    return out


def _ingest(
    session: Any,
    records: list[dict[str, Any]],
    out: Stored,
    project: str,
    holdout_fraction: float,
    window: str,
) -> None:
    if not records:
        return
    fill_windows(records, window)
    result = ingest(session, {"trajectories": records}, project=project, holdout_fraction=holdout_fraction)  # type: ignore[typeddict-item]
    out.trajectories += len(result.inserted)
    out.duplicates += len(result.duplicates)


def run_fields(layers: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Scenario/agent/group/source, tags and metadata from attribute layers, later layers winning."""
    fields: dict[str, Any] = {}
    tags: list[str] = []
    metadata: dict[str, Any] = {}
    for attrs in layers:
        for key, name in _FIELD_KEYS.items():
            value = attrs.get(key)
            if value not in (None, ""):
                fields[name] = str(value)
        if "agent" not in fields and attrs.get("gen_ai.agent.name"):
            fields["agent"] = str(attrs["gen_ai.agent.name"])
        for key in ("learnloop.tags", "tag.tags"):  # tag.tags: OpenInference's
            for tag in _tags(attrs.get(key)):
                if tag not in tags:
                    tags.append(tag)
        for key, value in attrs.items():
            if key.startswith(_METADATA_PREFIX) and len(key) > len(_METADATA_PREFIX):
                metadata[key[len(_METADATA_PREFIX) :]] = value
        for key, name in (
            ("gen_ai.conversation.id", "conversation_id"),
            ("session.id", "session_id"),
            ("user.id", "user_id"),
        ):
            if attrs.get(key) not in (None, ""):
                metadata[name] = attrs[key]
    return fields, tags, metadata


def _tags(value: Any) -> list[str]:
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    if isinstance(value, list):
        return [str(t) for t in value if t not in (None, "")]
    return []


# -- one span -------------------------------------------------------------------------------


def is_llm_call(span: Span) -> bool:
    """Whether ``span`` is one call to a model (see the module doc)."""
    attrs = span.attributes
    op = attrs.get("gen_ai.operation.name")
    if op is not None:
        return op in LLM_OPERATIONS
    kind = attrs.get("openinference.span.kind")
    if kind is not None:
        return str(kind).upper() == "LLM"
    if attrs.get("llm.request.type") in ("chat", "completion"):
        return True
    if any(k.startswith(("gen_ai.prompt.", "gen_ai.completion.")) for k in attrs):
        return True
    return any(name in _MESSAGE_EVENTS or name == "gen_ai.choice" for name, _ in span.events)


def llm_call(span: Span) -> LlmCall:
    """The call an LLM span records, in whichever message style it was written."""
    attrs = span.attributes
    details = next((a for name, a in span.events if name == _DETAILS_EVENT), None)
    if _has_semconv_messages(attrs):
        request, answer, finish = _semconv_messages(attrs)
    elif details is not None and _has_semconv_messages(details):
        request, answer, finish = _semconv_messages(details)
    elif any(k.startswith(("gen_ai.prompt.", "gen_ai.completion.")) for k in attrs):
        request, answer, finish = _legacy_messages(attrs)
    elif any(k.startswith(("llm.input_messages.", "llm.output_messages.")) for k in attrs):
        request, answer, finish = _openinference_messages(attrs)
    else:
        request, answer, finish = _event_messages(span.events)
    if answer is not None and answer.get("content") in (None, "") and not answer.get("tool_calls"):
        answer = None  # nothing the model said (as the SDK keeps an empty answer)
    meta: dict[str, Any] = {}
    if span.end_ns >= span.start_ns > 0:
        meta["latency_ms"] = round((span.end_ns - span.start_ns) / 1e6, 3)
    finish = finish or _first(attrs.get("gen_ai.response.finish_reasons")) or attrs.get("llm.finish_reason")
    if finish:
        meta["finish_reason"] = str(finish)
    used = usage(
        _pick(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"),
        _pick(
            attrs,
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.completion_tokens",
            "llm.token_count.completion",
        ),
        _pick(attrs, "gen_ai.usage.total_tokens", "llm.usage.total_tokens", "llm.token_count.total"),
    )
    if used:
        meta["usage"] = used
    if attrs.get("gen_ai.response.id"):
        meta["response_id"] = str(attrs["gen_ai.response.id"])
    params = _params(attrs)
    if params:
        meta["params"] = params
    if attrs.get("gen_ai.is_streaming") is True or attrs.get("llm.is_streaming") is True:
        meta["stream"] = True
    model = _pick(
        attrs, "gen_ai.response.model", "gen_ai.request.model", "llm.model_name", "llm.response.model"
    )
    return LlmCall(
        request=request,
        answer=answer,
        model=str(model) if model else None,
        tools=_tools(attrs, details),
        meta=meta,
        error=_error(span),
        started=_time(span.start_ns),
    )


def _pick(attrs: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = attrs.get(key)
        if value not in (None, ""):
            return value
    return None


def _first(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _time(ns: int) -> dt.datetime | None:
    if ns <= 0:
        return None
    try:
        return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _params(attrs: dict[str, Any]) -> dict[str, Any]:
    params = {name: attrs[key] for key, name in _SEMCONV_PARAMS.items() if attrs.get(key) is not None}
    invocation = maybe_json(attrs.get("llm.invocation_parameters"))  # OpenInference: the request's kwargs
    if isinstance(invocation, dict):
        params.update({k: v for k, v in invocation.items() if k in KEPT_PARAMS and v is not None})
    return params


def _error(span: Span) -> dict[str, Any] | None:
    if span.status_code != STATUS_ERROR:
        return None
    exception = next((a for name, a in span.events if name == "exception"), {})
    kind = exception.get("exception.type") or span.attributes.get("error.type") or "Error"
    message = span.status_message or exception.get("exception.message") or ""
    return {"type": str(kind), "message": str(message)[:4000]}


def _tools(attrs: dict[str, Any], details: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    raw = maybe_json(attrs.get("gen_ai.tool.definitions"))
    if raw is None and details is not None:
        raw = maybe_json(details.get("gen_ai.tool.definitions"))
    if raw is None:
        functions = unflatten(attrs, "llm.request.functions.")  # OpenLLMetry's attribute style
        raw = functions or None
    if raw is None:
        oi = unflatten(attrs, "llm.tools.")  # OpenInference: llm.tools.N.tool.json_schema
        raw = [t.get("tool", {}).get("json_schema") for t in oi if isinstance(t, dict)] or None
    if not isinstance(raw, list):
        return None
    tools = [t for t in (openai_tool(x) for x in raw) if t is not None]
    return tools or None


# -- message styles -------------------------------------------------------------------------

Messages = tuple[list[dict[str, Any]], dict[str, Any] | None, Any]


def _has_semconv_messages(attrs: dict[str, Any]) -> bool:
    return "gen_ai.input.messages" in attrs or "gen_ai.output.messages" in attrs


def _semconv_messages(attrs: dict[str, Any]) -> Messages:
    """The current GenAI conventions: JSON lists of ``{role, parts: [...]}``."""
    request: list[dict[str, Any]] = []
    system = maybe_json(attrs.get("gen_ai.system_instructions"))
    if isinstance(system, list):
        text = _parts_content(system)
        if text is not None:
            request.append({"role": "system", "content": text})
    elif isinstance(system, str) and system:
        request.append({"role": "system", "content": system})
    for m in _json_list(attrs.get("gen_ai.input.messages")):
        request.extend(_parts_message(m))
    outputs = _json_list(attrs.get("gen_ai.output.messages"))
    answer, finish = None, None
    if outputs:
        converted = _parts_message(outputs[0])
        answer = converted[0] if converted else None
        finish = outputs[0].get("finish_reason")
    return request, answer, finish


def _json_list(value: Any) -> list[dict[str, Any]]:
    value = maybe_json(value)
    return [m for m in value if isinstance(m, dict)] if isinstance(value, list) else []


def _parts_content(parts: list[Any]) -> Any:
    content = []
    for p in parts:
        if not isinstance(p, dict):
            continue
        kind = p.get("type")
        if kind == "text":
            content.append({"type": "text", "text": str(p.get("content") or "")})
        elif kind == "uri" and p.get("modality") == "image" and p.get("uri"):
            content.append({"type": "image_url", "image_url": {"url": p["uri"]}})
    if not content:
        return None
    if all(c["type"] == "text" for c in content):
        return "".join(c["text"] for c in content) if len(content) == 1 else content
    return content


def _parts_message(m: dict[str, Any]) -> list[dict[str, Any]]:
    """One GenAI-conventions message as OpenAI messages (a tool response part becomes a tool message)."""
    role = m.get("role") or "user"
    parts = m.get("parts")
    if not isinstance(parts, list):  # some writers send OpenAI's shape in the same attribute
        return [_openai_message(m)] if "content" in m or "tool_calls" in m else []
    calls = [
        openai_tool_call(p.get("id"), p.get("name"), p.get("arguments"))
        for p in parts
        if isinstance(p, dict) and p.get("type") == "tool_call"
    ]
    out: list[dict[str, Any]] = []
    content = _parts_content(parts)
    if content is not None or calls:
        msg: dict[str, Any] = {"role": role, "content": content}
        if calls:
            msg["tool_calls"] = calls
        if m.get("name"):
            msg["name"] = str(m["name"])
        out.append(msg)
    for p in parts:
        if isinstance(p, dict) and p.get("type") == "tool_call_response":
            answer = {
                "role": "tool",
                "tool_call_id": str(p.get("id") or ""),
                "content": _text(p.get("response")),
            }
            out.append(answer)
    return out


def _openai_message(m: dict[str, Any]) -> dict[str, Any]:
    msg = {k: v for k, v in m.items() if k in ("role", "content", "name", "tool_call_id") and v is not None}
    msg.setdefault("role", "user")
    msg["content"] = _content(m.get("content"))
    calls = maybe_json(m.get("tool_calls"))
    if isinstance(calls, list) and calls:
        msg["tool_calls"] = [_tool_call(c) for c in calls if isinstance(c, dict)]
    return msg


def _tool_call(c: dict[str, Any]) -> dict[str, Any]:
    fn = c.get("function") if isinstance(c.get("function"), dict) else c
    return openai_tool_call(c.get("id"), fn.get("name"), fn.get("arguments"))


def _content(value: Any) -> Any:
    value = maybe_json(value) if isinstance(value, str) and value.startswith("[{") else value
    if isinstance(value, list) and all(isinstance(p, dict) and "type" in p for p in value):
        return value
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _legacy_messages(attrs: dict[str, Any]) -> Messages:
    """OpenLLMetry's attribute style: ``gen_ai.prompt.N.role/content/tool_calls.M.*``."""
    request = []
    for m in unflatten(attrs, "gen_ai.prompt."):
        if isinstance(m, dict):
            msg = _openai_message(m)
            if msg["role"] != "tool":
                msg.pop("tool_call_id", None)
            request.append(msg)
    completions = [c for c in unflatten(attrs, "gen_ai.completion.") if isinstance(c, dict)]
    answer, finish = None, None
    if completions:
        answer = _openai_message({"role": "assistant", **completions[0]})
        finish = completions[0].get("finish_reason")
    return request, answer, finish


def _openinference_messages(attrs: dict[str, Any]) -> Messages:
    """OpenInference: ``llm.input_messages.N.message.role/content/contents/tool_calls.M.tool_call.*``."""

    def message(m: Any) -> dict[str, Any] | None:
        m = m.get("message") if isinstance(m, dict) else None
        if not isinstance(m, dict):
            return None
        msg: dict[str, Any] = {"role": m.get("role") or "user"}
        contents = [c.get("message_content") for c in m.get("contents") or () if isinstance(c, dict)]
        if m.get("content") is not None:
            msg["content"] = _content(m["content"])
        elif contents:
            parts = []
            for c in contents:
                if not isinstance(c, dict):
                    continue
                if c.get("type") == "text":
                    parts.append({"type": "text", "text": str(c.get("text") or "")})
                elif c.get("type") == "image":
                    url = ((c.get("image") or {}).get("image") or {}).get("url")
                    if url:
                        parts.append({"type": "image_url", "image_url": {"url": url}})
            msg["content"] = parts
        else:
            msg["content"] = None
        calls = [
            _tool_call(tc)
            for tc in (c.get("tool_call") for c in m.get("tool_calls") or () if isinstance(c, dict))
            if isinstance(tc, dict)
        ]
        if calls:
            msg["tool_calls"] = calls
        for key in ("tool_call_id", "name"):
            if m.get(key):
                msg[key] = str(m[key])
        return msg

    request = [m for m in (message(x) for x in unflatten(attrs, "llm.input_messages.")) if m is not None]
    outputs = [m for m in (message(x) for x in unflatten(attrs, "llm.output_messages.")) if m is not None]
    return request, outputs[0] if outputs else None, None


def _event_messages(events: list[tuple[str, dict[str, Any]]]) -> Messages:
    """The GenAI conventions' older per-message events (``gen_ai.user.message``, ``gen_ai.choice``)."""
    request: list[dict[str, Any]] = []
    answer, finish = None, None
    for name, attrs in events:
        role = _MESSAGE_EVENTS.get(name)
        if role is not None:
            msg = _openai_message({**attrs, "role": attrs.get("role") or role})
            if role == "tool" and not msg.get("tool_call_id") and attrs.get("id"):
                msg["tool_call_id"] = str(attrs["id"])
            request.append(msg)
        elif name == "gen_ai.choice" and answer is None and attrs.get("index", 0) in (0, None):
            message = maybe_json(attrs.get("message"))
            if isinstance(message, dict):
                answer = _openai_message({"role": "assistant", **message})
            finish = attrs.get("finish_reason")
    return request, answer, finish


def unflatten(attrs: dict[str, Any], prefix: str) -> list[Any]:
    """Indexed attributes (``prefix0.role``, ``prefix0.tool_calls.1.name``) as a list of nested dicts;
    numbered levels become lists in index order."""
    root: dict[str, Any] = {}
    for key, value in attrs.items():
        if not key.startswith(prefix):
            continue
        *path, leaf = key[len(prefix) :].split(".")
        node = root
        for part in path:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        if not isinstance(node.get(leaf), dict):
            node[leaf] = value
    listed = _listify(root)
    return listed if isinstance(listed, list) else []


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(k.isdigit() for k in node):
        return [_listify(node[k]) for k in sorted(node, key=int)]
    return {k: _listify(v) for k, v in node.items()}
