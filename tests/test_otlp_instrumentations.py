"""The whole path real: an instrumentation package (OpenLLMetry's or OpenInference's OpenAI
instrumentor) wraps the official ``openai`` client, which calls learnloop's own served endpoint
(the tiny model); the SDK's OTLP/HTTP exporter sends the spans to the same server's
/otlp/v1/traces, and the agent run is stored as one trajectory. Both databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otlp_support import TOKEN, exporter, provider
from pydantic import SecretStr
from serving_support import one_torch_thread

from api_support import live_server
from learnloop.api import create_app
from learnloop.config import Settings
from learnloop.serving.local import LocalBackend
from learnloop.serving.runtime import ServingRuntime
from learnloop.store.db import Database
from learnloop.store.models import Trajectory

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Find an order by id",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
        },
    }
]


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> Iterator[LocalBackend]:
    with one_torch_thread():
        b = LocalBackend(tiny_model_dir, device="cpu", max_batch_size=4, max_queued=16)
        yield b
        b.close()


def _instrumentor(name: str):  # noqa: ANN202
    if name == "openllmetry":
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor
    else:
        from openinference.instrumentation.openai import OpenAIInstrumentor
    return OpenAIInstrumentor()


@pytest.mark.parametrize("instrumentation", ["openllmetry", "openinference"])
def test_instrumented_openai_client_agent_run_becomes_one_trajectory(
    db: Database,
    settings: Settings,
    backend: LocalBackend,
    instrumentation: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    runtime = ServingRuntime(backend, db, poll_seconds=0.1, capture=None)  # only OTLP stores here
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization=Bearer%20{TOKEN}")
    monkeypatch.setenv("TRACELOOP_TRACE_CONTENT", "true")
    with live_server(create_app(s, db, watch_inbox=False, serving=runtime)) as url:
        sent = InMemorySpanExporter()
        tp = provider(exporter(url, "protobuf"), **{"learnloop.scenario": "orders"})
        tp.add_span_processor(SimpleSpanProcessor(sent))
        instrumentor = _instrumentor(instrumentation)
        instrumentor.instrument(tracer_provider=tp)
        try:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN)
            with tp.get_tracer("support.agent").start_as_current_span(
                "support agent", attributes={"learnloop.agent": "triage"}
            ) as root:
                messages = [
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": "Where is order 7?"},
                ]
                first = client.chat.completions.create(
                    model="learnloop", messages=messages, tools=TOOLS, max_tokens=6, temperature=0
                )
                messages = [
                    *messages,
                    {"role": "assistant", "content": first.choices[0].message.content},
                    {"role": "user", "content": "Thanks. And order 8?"},
                ]
                second = client.chat.completions.create(
                    model="learnloop", messages=messages, max_tokens=5, temperature=0
                )
        finally:
            instrumentor.uninstrument()
        assert tp.force_flush(60_000)
        tp.shutdown()

    llm_spans = [sp for sp in sent.get_finished_spans() if sp.name != "support agent"]
    assert len(llm_spans) == 2  # one span per call: what the instrumentation itself recorded
    trace_id = f"{root.get_span_context().trace_id:032x}"
    first_span = f"{min(llm_spans, key=lambda sp: sp.start_time).get_span_context().span_id:016x}"
    with db.read_session() as session:
        rows = session.query(Trajectory).all()
    assert [r.id for r in rows] == [f"otlp-{trace_id}-{first_span}"]
    row = rows[0]
    assert (row.scenario, row.agent, row.model) == ("orders", "triage", "base")
    expected = [*messages, {"role": "assistant", "content": second.choices[0].message.content}]
    assert row.messages == [m for m in expected if m.get("content")]
    assert row.tools == TOOLS
    calls = row.meta["llm_calls"]
    assert len(calls) == 2
    for call, answer in zip(calls, (first, second)):
        assert call["usage"]["prompt_tokens"] == answer.usage.prompt_tokens
        assert call["usage"]["completion_tokens"] == answer.usage.completion_tokens
        assert call["latency_ms"] > 0
    assert calls[1]["params"]["max_tokens"] == 5
