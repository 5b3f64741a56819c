"""Decoding OTLP trace exports (protobuf, or OTLP/JSON with hex ids) into plain ``Span`` objects with the
official ``opentelemetry-proto`` classes; a span without valid ids refuses the whole export."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from learnloop.errors import Unparsable, ValidationFailed, problems_text

# Span.flags bits (OTLP 1.1): whether the parent is known to be remote, and whether it is.
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200


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
