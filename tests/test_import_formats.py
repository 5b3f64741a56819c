"""`learnloop import --format otlp-json|openai-chat|langfuse`, run as the real command on both
databases: the same mappings as the live paths, each file all-or-nothing, re-imports no-ops."""

from __future__ import annotations

import json
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otlp_support import otlp_json, semconv_call, text
from test_cli import run

from learnloop.store import Database
from learnloop.store.models import Score, Trajectory


def _rows(db: Database) -> dict[str, Trajectory]:
    with db.read_session() as s:
        return {t.id: t for t in s.query(Trajectory).all()}


def _one_call_trace(question: str) -> tuple[dict, str]:
    sent = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(sent))
    with tp.get_tracer("app").start_as_current_span(
        "chat", attributes=semconv_call([text("user", question)], [text("assistant", f"re: {question}")])
    ) as sp:
        pass
    ctx = sp.get_span_context()
    return otlp_json(sent.get_finished_spans()), f"otlp-{ctx.trace_id:032x}-{ctx.span_id:016x}"


def test_otlp_json_files_one_request_or_one_per_line(tmp_path: Path, db: Database) -> None:
    (doc_a, id_a), (doc_b, id_b), (doc_c, id_c) = (_one_call_trace(q) for q in ("a?", "b?", "c?"))
    (tmp_path / "one.json").write_text(json.dumps(doc_a, indent=2))
    (tmp_path / "collector.jsonl").write_text(json.dumps(doc_b) + "\n" + json.dumps(doc_c) + "\n")
    r = run(
        tmp_path,
        "import",
        "--format",
        "otlp-json",
        str(tmp_path / "one.json"),
        str(tmp_path / "collector.jsonl"),
        db=db,
    )
    assert r.returncode == 0, r.stderr
    rows = _rows(db)
    assert set(rows) == {id_a, id_b, id_c}
    assert rows[id_b].messages == [
        {"role": "user", "content": "b?"},
        {"role": "assistant", "content": "re: b?"},
    ]
    again = run(tmp_path, "import", "--format", "otlp-json", "--json", str(tmp_path / "one.json"), db=db)
    assert json.loads(again.stdout)["duplicates"] == 1 and len(_rows(db)) == 3
    # A file with a span missing its id is refused whole, naming it.
    doc_b["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] = ""
    (tmp_path / "bad.json").write_text(
        json.dumps({"resourceSpans": doc_a["resourceSpans"] + doc_b["resourceSpans"]})
    )
    bad = run(tmp_path, "import", "--format", "otlp-json", str(tmp_path / "bad.json"), db=db)
    assert (
        bad.returncode == 1 and "resource_spans[1].scope_spans[0].spans[0].trace_id: is missing" in bad.stderr
    )
    assert "Nothing from this file was stored" in bad.stderr and len(_rows(db)) == 3


def test_openai_chat_jsonl_conversations_and_logged_calls(tmp_path: Path, db: Database) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    call = {
        "request": {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "order 7?"}],
            "tools": tools,
            "temperature": 0.3,
        },
        "response": {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini-2024",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Shipped.", "refusal": None},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        },
    }
    convo = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "tools": tools,
    }
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps(convo) + "\n\n" + json.dumps(call) + "\n")
    r = run(tmp_path, "import", "--format", "openai-chat", str(path), db=db)
    assert r.returncode == 0, r.stderr
    assert "2 records, 2 inserted" in r.stdout
    rows = sorted(_rows(db).values(), key=lambda t: len(t.meta))
    plain, logged = rows
    assert plain.messages == convo["messages"] and plain.tools == tools
    assert logged.messages == [
        {"role": "user", "content": "order 7?"},
        {"role": "assistant", "content": "Shipped."},
    ]
    assert logged.model == "gpt-4o-mini-2024" and logged.tools == tools
    assert logged.meta["usage"]["total_tokens"] == 11 and logged.meta["finish_reason"] == "stop"
    assert logged.meta["params"] == {"temperature": 0.3} and logged.meta["response_id"] == "chatcmpl-1"
    assert logged.created_at.timestamp() == 1_700_000_000
    assert (
        json.loads(run(tmp_path, "import", "--format", "openai-chat", "--json", str(path), db=db).stdout)[
            "duplicates"
        ]
        == 2
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(convo) + "\n" + json.dumps({"prompt": "x"}) + "\n{oops\n")
    r = run(tmp_path, "import", "--format", "openai-chat", str(bad), db=db)
    assert r.returncode == 1 and "line 3: invalid JSON" in r.stderr and len(_rows(db)) == 2


def test_langfuse_traces_with_observations_and_observations_alone(tmp_path: Path, db: Database) -> None:
    gen = {
        "type": "GENERATION",
        "model": "gpt-4o",
        "modelParameters": {"temperature": 0, "max_tokens": 50},
        "usageDetails": {"input": 12, "output": 4, "total": 16},
    }
    trace = {
        "id": "lf-trace-1",
        "name": "support-chat",
        "tags": ["prod"],
        "userId": "u1",
        "metadata": {"learnloop": {"scenario": "support", "agent": "helper"}, "region": "eu"},
        "scores": [
            {"name": "helpfulness", "value": 0.8},
            {"name": "label", "value": None, "stringValue": "x"},
        ],
        "observations": [
            {
                **gen,
                "id": "g2",
                "traceId": "lf-trace-1",
                "startTime": "2026-01-01T10:00:02Z",
                "endTime": "2026-01-01T10:00:03Z",
                "input": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "bye"},
                ],
                "output": {"role": "assistant", "content": "see you"},
            },
            {
                **gen,
                "id": "g1",
                "traceId": "lf-trace-1",
                "startTime": "2026-01-01T10:00:00Z",
                "endTime": "2026-01-01T10:00:00.5Z",
                "input": {
                    "messages": [{"role": "user", "content": "hi"}],
                    "tools": [{"type": "function", "function": {"name": "t"}}],
                },
                "output": "hello",
            },
            {"type": "SPAN", "id": "s1", "traceId": "lf-trace-1", "name": "retrieval"},
        ],
    }
    alone = {
        **gen,
        "id": "g9",
        "traceId": "lf-trace-2",
        "startTime": "2026-01-02T00:00:00Z",
        "input": "ping",
        "output": "pong",
        "level": "ERROR",
        "statusMessage": "timeout",
    }
    (tmp_path / "trace.json").write_text(json.dumps({"data": [trace], "meta": {"page": 1}}))
    (tmp_path / "observations.jsonl").write_text(json.dumps(alone) + "\n")
    r = run(tmp_path, "import", "--format", "langfuse", str(tmp_path), db=db)
    assert r.returncode == 0, r.stderr
    rows = _rows(db)
    run_row, single = rows["langfuse-lf-trace-1"], rows["langfuse-lf-trace-2"]
    assert (run_row.scenario, run_row.agent, run_row.tags) == ("support", "helper", ["prod"])
    assert run_row.messages == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "see you"},
    ]
    calls = run_row.meta["llm_calls"]
    assert [c["observation_id"] for c in calls] == ["g1", "g2"] and calls[0]["latency_ms"] == 500.0
    assert calls[0]["usage"] == {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
    assert run_row.meta["region"] == "eu" and run_row.meta["langfuse"]["name"] == "support-chat"
    assert run_row.tools == [{"type": "function", "function": {"name": "t"}}]
    with db.read_session() as s:
        scores = [(sc.name, sc.value) for sc in s.query(Score).filter(Score.trajectory_id == run_row.id)]
    assert scores == [("helpfulness", 0.8)]
    assert single.messages == [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]
    assert single.meta["error"] == {"type": "Error", "message": "timeout"}
