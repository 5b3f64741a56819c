"""The LLM calls of a trace to one trajectory: mapping an export's spans, and storing runs when
their root span arrives (their calls wait in ``store.otlp_calls`` until then)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from learnloop.capture.calls import LlmCall, trajectory_record
from learnloop.capture.otlp.decode import Span
from learnloop.capture.otlp.spans import NO_CONTENT, is_llm_call, llm_call
from learnloop.errors import LearnloopError, ValidationFailed, problems_text
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
_FIELD_KEYS = {
    "learnloop.scenario": "scenario",
    "learnloop.agent": "agent",
    "learnloop.group": "group",
    "learnloop.source": "source",
}
_METADATA_PREFIX = "learnloop.metadata."


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
    """Find the LLM calls among decoded spans and map each (see the module doc); a call without
    content is rejected here, one the store refuses when its run is built (``build_run``)."""
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
    """The trajectory of one trace's calls (none or one). A call the store refuses is left out and
    added to ``rejected`` with the reason; the run is made of the others."""
    calls = sorted({c.span_id: c for c in calls}.values(), key=lambda c: (c.start_ns, c.span_id))
    if not calls:
        return []
    try:
        return [run_record(trace_id, calls, root)]
    except LearnloopError as exc:
        if len(calls) == 1:
            rejected.append((calls[0].span_id, str(exc)))
            return []
    kept = []  # which calls the store refuses: each alone
    for c in calls:
        try:
            run_record(trace_id, [c], root)
        except LearnloopError as exc:
            rejected.append((c.span_id, str(exc)))
        else:
            kept.append(c)
    if not kept:
        return []
    try:
        return [run_record(trace_id, kept, root)]
    except LearnloopError as exc:  # each call passes alone, not together: refuse the run
        rejected.extend((c.span_id, str(exc)) for c in kept)
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
