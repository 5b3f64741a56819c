"""POST /otlp/v1/traces with the real OpenTelemetry SDK and its OTLP/HTTP exporter against a live
server (protobuf and JSON, gzip, the token from OTEL_EXPORTER_OTLP_HEADERS), on both databases;
and every refusal an export can meet, with nothing of a refused export stored."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from google.protobuf import json_format
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status as SpanStatus
from opentelemetry.trace import StatusCode
from otlp_support import TOKEN, exporter, otlp_json, provider, semconv_call, text
from pydantic import SecretStr

from api_support import live_server
from learnloop.api import create_app
from learnloop.config import Settings
from learnloop.store.db import Database
from learnloop.store.models import Trajectory

TOOLS = [
    {
        "type": "function",
        "name": "lookup_order",
        "description": "Find an order",
        "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
    }
]


def _rows(db: Database) -> list[Trajectory]:
    with db.read_session() as s:
        return s.query(Trajectory).order_by(Trajectory.created_at).all()


def _agent_run(tp: TracerProvider, *, fail_second: bool = False) -> tuple[str, str]:
    """An agent run: a root span, two chat calls (the first asks for a tool), a tool span and a
    database span. Returns the trace id and the first call's span id, in hex."""
    tracer = tp.get_tracer("support.agent", "1.2")
    with tracer.start_as_current_span(
        "support agent", attributes={"learnloop.agent": "triage", "learnloop.metadata.customer": "c42"}
    ) as root:
        question = [text("system", "Be brief."), text("user", "Where is order 7?")]
        call = {"type": "tool_call", "id": "call_1", "name": "lookup_order", "arguments": {"id": "7"}}
        with tracer.start_as_current_span(
            "chat gpt-test",
            attributes=semconv_call(
                question,
                [{"role": "assistant", "parts": [call], "finish_reason": "tool_call"}],
                **{
                    "gen_ai.tool.definitions": json.dumps(TOOLS),
                    "gen_ai.usage.input_tokens": 20,
                    "gen_ai.usage.output_tokens": 5,
                    "gen_ai.request.temperature": 0.2,
                    "gen_ai.response.id": "resp-1",
                },
            ),
        ) as first:
            pass
        with tracer.start_as_current_span(
            "execute_tool lookup_order", attributes={"gen_ai.operation.name": "execute_tool"}
        ):
            with tracer.start_as_current_span("SELECT orders"):
                pass
        answer = [{"type": "tool_call_response", "id": "call_1", "response": {"status": "shipped"}}]
        second_inputs = [*question, {"role": "assistant", "parts": [call]}, {"role": "tool", "parts": answer}]
        with tracer.start_as_current_span(
            "chat gpt-test",
            attributes=semconv_call(
                second_inputs,
                [text("assistant", "Order 7 has shipped.", finish_reason="stop")],
                **{"gen_ai.usage.input_tokens": 40, "gen_ai.usage.output_tokens": 6},
            ),
        ) as second:
            if fail_second:
                second.set_status(SpanStatus(StatusCode.ERROR, "rate limited"))
    return f"{root.get_span_context().trace_id:032x}", f"{first.get_span_context().span_id:016x}"


@pytest.fixture
def otlp_server(db: Database, settings: Settings) -> Iterator[str]:
    s = settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    with live_server(create_app(s, db, watch_inbox=False)) as url:
        yield url


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_sdk_exporter_stores_an_agent_run_as_one_trajectory_once(
    otlp_server: str, db: Database, encoding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stock exporter reads its headers from the environment, URL-encoded, as users set them.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization=Bearer%20{TOKEN}")
    sent = InMemorySpanExporter()
    span_exporter = exporter(otlp_server, encoding)
    tp = provider(span_exporter, **{"learnloop.scenario": "orders", "learnloop.tags": ["otel", "beta"]})
    tp.add_span_processor(SimpleSpanProcessor(sent))
    trace_id, first_span = _agent_run(tp)
    assert tp.force_flush(60_000)

    [row] = _rows(db)
    assert row.id == f"otlp-{trace_id}-{first_span}"
    assert (row.scenario, row.agent, row.tags, row.source.value) == (
        "orders",
        "triage",
        ["otel", "beta"],
        "production",
    )
    assert row.model == "gpt-test-0613"
    assert row.tools == [
        {
            "type": "function",
            "function": {
                "name": "lookup_order",
                "description": "Find an order",
                "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
            },
        }
    ]
    assert row.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is order 7?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup_order", "arguments": '{"id": "7"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'},
        {"role": "assistant", "content": "Order 7 has shipped."},
    ]
    calls = row.meta["llm_calls"]
    assert [c["usage"] for c in calls] == [
        {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
        {"prompt_tokens": 40, "completion_tokens": 6, "total_tokens": 46},
    ]
    assert [c["finish_reason"] for c in calls] == ["tool_call", "stop"]
    assert calls[0]["params"] == {"temperature": 0.2} and calls[0]["response_id"] == "resp-1"
    assert all(c["latency_ms"] >= 0 for c in calls) and calls[0]["span_id"] == first_span
    assert row.meta["customer"] == "c42"
    assert row.meta["otlp"] == {
        "trace_id": trace_id,
        "span_id": first_span,
        "service": "support-bot",
        "scope": "support.agent",
    }

    # A resent export (the exporter retrying after a lost answer) stores nothing twice.
    assert span_exporter.export(sent.get_finished_spans()) == SpanExportResult.SUCCESS
    assert len(_rows(db)) == 1
    tp.shutdown()


def test_the_wrong_token_is_refused_and_nothing_is_stored(
    otlp_server: str, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20nope")
    sent = InMemorySpanExporter()
    tp = provider(exporter(otlp_server, "protobuf"))
    tp.add_span_processor(SimpleSpanProcessor(sent))
    _agent_run(tp)
    tp.force_flush(60_000)
    assert _rows(db) == []
    body = encode_spans(sent.get_finished_spans()).SerializeToString()
    r = httpx.post(
        f"{otlp_server}/otlp/v1/traces", content=body, headers={"Content-Type": "application/x-protobuf"}
    )
    assert r.status_code == 401 and r.headers["content-type"] == "application/x-protobuf"
    status = Status.FromString(r.content)
    assert status.code == 16 and "bearer token" in status.message
    tp.shutdown()


# -- the answers, on the ASGI app --------------------------------------------------------------


@pytest.fixture
def client(db: Database, settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, db, watch_inbox=False)) as c:
        yield c


def _spans(*, fail_second: bool = False) -> tuple[list[ReadableSpan], str, str]:
    sent = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(sent))
    trace_id, first = _agent_run(tp, fail_second=fail_second)
    return list(sent.get_finished_spans()), trace_id, first


def _post(
    client: TestClient, body: bytes, kind: str = "application/x-protobuf", **headers: str
) -> httpx.Response:
    return client.post("/otlp/v1/traces", content=body, headers={"Content-Type": kind, **headers})


def test_partial_success_names_the_refused_spans_and_keeps_the_rest(client: TestClient, db: Database) -> None:
    spans, trace_id, _ = _spans()
    # A second trace whose only LLM call was recorded without its content (capture turned off).
    sent = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(sent))
    with tp.get_tracer("bare").start_as_current_span(
        "chat", attributes={"gen_ai.operation.name": "chat"}
    ) as bare:
        pass
    request = encode_spans([*spans, *sent.get_finished_spans()])
    r = _post(client, request.SerializeToString())
    assert r.status_code == 200, r.text
    answer = ExportTraceServiceResponse.FromString(r.content)
    bare_id = f"{bare.get_span_context().span_id:016x}"
    assert answer.partial_success.rejected_spans == 1
    assert bare_id in answer.partial_success.error_message
    assert "content capture" in answer.partial_success.error_message
    assert r.headers["x-learnloop-ignored-spans"] == "3"  # the root, the tool span, the database span
    [row] = _rows(db)
    assert row.id.startswith(f"otlp-{trace_id}-")
    # The same in JSON: the answer is the JSON encoding of the same message.
    r = _post(
        client, json.dumps(otlp_json([*spans, *sent.get_finished_spans()])).encode(), "application/json"
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert json.loads(r.text)["partialSuccess"]["rejectedSpans"] == "1"
    assert len(_rows(db)) == 1


def test_a_failed_call_keeps_its_error(client: TestClient, db: Database) -> None:
    spans, _, _ = _spans(fail_second=True)
    r = _post(client, gzip.compress(encode_spans(spans).SerializeToString()), **{"Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert ExportTraceServiceResponse.FromString(r.content).partial_success.rejected_spans == 0
    [row] = _rows(db)
    assert row.meta["llm_calls"][1]["error"] == {"type": "Error", "message": "rate limited"}
    assert "error" not in row.meta["llm_calls"][0]


def _status(r: httpx.Response) -> Status:
    if r.headers["content-type"] == "application/json":
        return json_format.ParseDict(
            {k: v for k, v in r.json().items() if k in ("code", "message")}, Status()
        )
    return Status.FromString(r.content)


def test_bad_exports_are_refused_whole_with_the_reason(client: TestClient, db: Database) -> None:
    spans, _, _ = _spans()
    good = encode_spans(spans)

    def refused(r: httpx.Response, status: int, *words: str) -> None:
        assert r.status_code == status, r.text
        message = _status(r).message
        assert all(w in message for w in words), message

    refused(_post(client, b"\x0a\xff\xff\xff"), 400, "not a protobuf OTLP ExportTraceServiceRequest")
    refused(_post(client, b"{not json", "application/json"), 400, "not valid JSON")
    refused(_post(client, b"[1, 2]", "application/json"), 400, "expected an OTLP ExportTraceServiceRequest")
    refused(_post(client, b"\x1f\x8b garbage", **{"Content-Encoding": "gzip"}), 400, "not valid gzip")
    refused(
        _post(client, good.SerializeToString(), **{"Content-Encoding": "br"}), 415, "'br' is not supported"
    )
    refused(_post(client, good.SerializeToString(), "text/plain"), 415, "send application/x-protobuf")

    # A span without its trace id (and one with a short span id): the whole export is refused.
    broken = encode_spans(spans)
    broken.resource_spans[0].scope_spans[0].spans[1].trace_id = b""
    broken.resource_spans[0].scope_spans[0].spans[3].span_id = b"\x01\x02"
    refused(
        _post(client, broken.SerializeToString()),
        400,
        "spans[1].trace_id: is missing",
        "spans[3].span_id: is 2 bytes",
        "Nothing was stored",
    )
    doc = otlp_json(spans)
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = "zz"
    refused(_post(client, json.dumps(doc).encode(), "application/json"), 400, "spanId", "is not hex")

    # An exporter from before OTLP 1.0 (instrumentationLibrarySpans): said, not silently dropped.
    old = {"resourceSpans": [{"resource": {}, "instrumentationLibrarySpans": [{"spans": []}]}]}
    refused(_post(client, json.dumps(old).encode(), "application/json"), 400, "OTLP version before 0.19")

    # Oversized: more spans than server.max_batch_size, or a body that inflates past max_request_bytes.
    settings = client.app.state.settings
    settings.server.max_batch_size = 3
    refused(_post(client, good.SerializeToString()), 413, "holds 5 spans", "server.max_batch_size")
    settings.server.max_batch_size = 5000
    bomb = gzip.compress(b"\x00" * (settings.server.max_request_bytes + 10))
    refused(_post(client, bomb, **{"Content-Encoding": "gzip"}), 413, "once decompressed")
    assert _rows(db) == []


def test_a_run_split_over_exports_is_stored_whole_when_its_root_span_arrives(
    otlp_server: str, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SimpleSpanProcessor: every span is its own export, sent as it ends (the root last), as a batch
    # processor does with a run longer than its schedule delay.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization=Bearer%20{TOKEN}")
    span_exporter = exporter(otlp_server, "protobuf")
    sent = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(span_exporter))
    tp.add_span_processor(SimpleSpanProcessor(sent))
    tracer = tp.get_tracer("support.agent")
    with tracer.start_as_current_span("support agent", attributes={"learnloop.scenario": "orders"}) as root:
        q = [text("user", "Where is order 7?")]
        with tracer.start_as_current_span(
            "chat", attributes=semconv_call(q, [text("assistant", "Checking.")])
        ) as first:
            assert _rows(db) == []
        with tracer.start_as_current_span(
            "chat",
            attributes=semconv_call(
                [*q, text("assistant", "Checking."), text("user", "Thanks")],
                [text("assistant", "It shipped.")],
            ),
        ):
            pass
        assert _rows(db) == []  # both calls wait for the run's root span
    [row] = _rows(db)
    trace_id = f"{root.get_span_context().trace_id:032x}"
    assert row.id == f"otlp-{trace_id}-{first.get_span_context().span_id:016x}" and row.scenario == "orders"
    assert [m["content"] for m in row.messages] == ["Where is order 7?", "Checking.", "Thanks", "It shipped."]
    assert len(row.meta["llm_calls"]) == 2
    # Every export sent again, one by one and all at once: nothing is stored twice, no part of the run
    # becomes a trajectory of its own.
    spans = sent.get_finished_spans()
    for sp in spans:
        assert span_exporter.export([sp]) == SpanExportResult.SUCCESS
    assert span_exporter.export(spans) == SpanExportResult.SUCCESS
    assert [r.id for r in _rows(db)] == [row.id]
    tp.shutdown()


def test_calls_whose_root_never_comes_are_stored_after_the_run_timeout(
    client: TestClient, db: Database
) -> None:
    spans, trace_id, first = _spans()
    orphans = [sp for sp in spans if sp.parent is not None]  # the root span is never exported
    r = _post(client, encode_spans(orphans).SerializeToString())
    assert r.status_code == 200, r.text
    assert _rows(db) == []
    client.app.state.settings.server.otlp_run_timeout_seconds = 1e-6
    assert _post(client, b"").status_code == 200  # any later export stores what waited too long
    [row] = _rows(db)
    assert row.id == f"otlp-{trace_id}-{first}" and len(row.meta["llm_calls"]) == 2
    assert row.scenario is None and row.agent is None  # the root's attributes never came
