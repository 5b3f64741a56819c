"""Helpers for the OTLP tests: tracer providers that export to a learnloop server with the real
OpenTelemetry SDK, in protobuf (the SDK's own OTLP/HTTP exporter) or in OTLP/JSON.

The Python SDK's HTTP exporter speaks protobuf only; OTLP/JSON (what the JavaScript SDK's JSON
exporter and the Collector's ``otlphttp`` exporter with ``encoding: json`` send) is made here from
the SDK's own encoding of the same spans, with the hex ids the OTLP/JSON encoding prescribes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

import httpx
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

TOKEN = "otlp-secret"


def otlp_json(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """The OTLP/JSON encoding of ``spans``: the protobuf JSON mapping, with ids in hex."""
    doc = json_format.MessageToDict(encode_spans(spans))
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = base64.b64decode(span[key]).hex()
    return doc


class JsonSpanExporter(SpanExporter):
    """Exports like an OTLP/HTTP JSON exporter: POST the JSON encoding, gzip-compressed."""

    def __init__(self, endpoint: str, headers: dict[str, str]) -> None:
        self.endpoint, self.headers = endpoint, headers
        self.responses: list[httpx.Response] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        import gzip

        body = gzip.compress(json.dumps(otlp_json(spans)).encode())
        headers = {**self.headers, "Content-Type": "application/json", "Content-Encoding": "gzip"}
        r = httpx.post(self.endpoint, content=body, headers=headers, timeout=60)
        self.responses.append(r)
        return SpanExportResult.SUCCESS if r.status_code == 200 else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass


def exporter(url: str, encoding: str, token: str | None = TOKEN) -> SpanExporter:
    """The protobuf exporter takes its token from OTEL_EXPORTER_OTLP_HEADERS (set by the caller)."""
    endpoint = f"{url}/otlp/v1/traces"
    if encoding == "json":
        return JsonSpanExporter(endpoint, {"Authorization": f"Bearer {token}"} if token else {})
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint, compression=Compression.Gzip)


def provider(span_exporter: SpanExporter, **resource: Any) -> TracerProvider:
    """A provider whose batch processor sends everything at ``force_flush`` in one export (a long
    schedule delay, so no timer splits a test's spans over two exports)."""
    tp = TracerProvider(resource=Resource.create({"service.name": "support-bot", **resource}))
    tp.add_span_processor(BatchSpanProcessor(span_exporter, schedule_delay_millis=600_000))
    return tp


def semconv_call(inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Span attributes of one chat call in the current GenAI conventions (JSON message attributes)."""
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-test",
        "gen_ai.response.model": "gpt-test-0613",
        "gen_ai.input.messages": json.dumps(inputs),
        "gen_ai.output.messages": json.dumps(outputs),
        **extra,
    }


def text(role: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"role": role, "parts": [{"type": "text", "content": content}], **extra}
