"""The span-to-trajectory mapping for each message style instrumentations write, read from OTLP/JSON
as an export sends it: OpenLLMetry's attribute style, OpenInference's, the GenAI conventions'
per-message events and their operation-details event; which spans are calls; the learnloop.*
attributes; and a bad call refused alone."""

from __future__ import annotations

import json
from typing import Any

from learnloop.capture.otlp import decode_json, map_spans, trajectories

TRACE, OTHER_TRACE = "5b8efff798038103d269b633813fc60c", "aa8efff798038103d269b633813fc6ff"
T0 = 1_700_000_000_000_000_000


def value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, list):
        return {"arrayValue": {"values": [value(x) for x in v]}}
    if isinstance(v, dict):
        return {"kvlistValue": {"values": [{"key": k, "value": value(x)} for k, x in v.items()]}}
    return {"stringValue": v}


def attrs(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": value(v)} for k, v in d.items()]


def span(
    span_id: str,
    attributes: dict[str, Any],
    *,
    trace: str = TRACE,
    parent: str | None = "00f067aa0ba902b7",
    start_ms: int = 0,
    events: list[tuple[str, dict[str, Any]]] = (),
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out = {
        "traceId": trace,
        "spanId": span_id,
        "name": "span",
        "kind": 3,
        "startTimeUnixNano": str(T0 + start_ms * 1_000_000),
        "endTimeUnixNano": str(T0 + (start_ms + 250) * 1_000_000),
        "attributes": attrs(attributes),
        "events": [{"name": n, "timeUnixNano": str(T0), "attributes": attrs(a)} for n, a in events],
    }
    if parent:
        out["parentSpanId"] = parent
    if status:
        out["status"] = status
    return out


def export(*spans: dict[str, Any], resource: dict[str, Any] | None = None) -> bytes:
    doc = {
        "resourceSpans": [
            {
                "resource": {"attributes": attrs({"service.name": "app", **(resource or {})})},
                "scopeSpans": [{"scope": {"name": "instr"}, "spans": list(spans)}],
            }
        ]
    }
    return json.dumps(doc).encode()


def mapped(*spans: dict[str, Any], resource: dict[str, Any] | None = None):  # noqa: ANN201
    """The mapping, and the trajectories it makes when no root span is awaited (as from a file)."""
    out = map_spans(decode_json(export(*spans, resource=resource)))
    out.trajectories = trajectories(out)
    return out


def test_openllmetry_attribute_style_with_tools_and_a_single_call_shape() -> None:
    call = span(
        "1111111111111111",
        {
            "llm.request.type": "chat",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-2024",
            "gen_ai.prompt.0.role": "user",
            "gen_ai.prompt.0.content": "weather in Paris?",
            "gen_ai.prompt.1.role": "assistant",
            "gen_ai.prompt.1.tool_calls.0.id": "c1",
            "gen_ai.prompt.1.tool_calls.0.name": "weather",
            "gen_ai.prompt.1.tool_calls.0.arguments": '{"city": "Paris"}',
            "gen_ai.prompt.2.role": "tool",
            "gen_ai.prompt.2.tool_call_id": "c1",
            "gen_ai.prompt.2.content": "18C",
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": "18C and sunny.",
            "gen_ai.completion.0.finish_reason": "stop",
            "llm.request.functions.0.name": "weather",
            "llm.request.functions.0.description": "Weather by city",
            "llm.request.functions.0.parameters": '{"type": "object"}',
            "gen_ai.usage.prompt_tokens": 30,
            "gen_ai.usage.completion_tokens": 7,
            "gen_ai.request.max_tokens": 100,
        },
    )
    out = mapped(call, resource={"learnloop.source": "teacher", "learnloop.tags": "a, b"})
    [t] = out.trajectories
    assert (out.llm_spans, out.ignored, out.rejected) == (1, 0, [])
    assert (
        t["id"] == f"otlp-{TRACE}-1111111111111111" and t["source"] == "teacher" and t["tags"] == ["a", "b"]
    )
    assert t["messages"] == [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        {"role": "assistant", "content": "18C and sunny."},
    ]
    assert t["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather by city",
                "parameters": {"type": "object"},
            },
        }
    ]
    # One call alone: its metadata is the trajectory's, as for a wrapped call outside a trajectory.
    meta = t["metadata"]
    assert "llm_calls" not in meta and meta["latency_ms"] == 250.0 and meta["finish_reason"] == "stop"
    assert meta["usage"] == {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37}
    assert meta["params"] == {"max_tokens": 100} and t["model"] == "gpt-4o-2024"
    assert t["created_at"].timestamp() == T0 / 1e9


def test_openinference_style_and_a_bad_call_refused_alone() -> None:
    good = span(
        "2222222222222222",
        {
            "openinference.span.kind": "LLM",
            "llm.model_name": "claude-x",
            "llm.invocation_parameters": '{"temperature": 0.5, "api_key": "never kept"}',
            "llm.input_messages.0.message.role": "user",
            "llm.input_messages.0.message.contents.0.message_content.type": "text",
            "llm.input_messages.0.message.contents.0.message_content.text": "what is this?",
            "llm.input_messages.0.message.contents.1.message_content.type": "image",
            "llm.input_messages.0.message.contents.1.message_content.image.image.url": "https://x/cat.png",
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.tool_calls.0.tool_call.id": "t1",
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "identify",
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": "{}",
            "llm.tools.0.tool.json_schema": json.dumps(
                {"type": "function", "function": {"name": "identify"}}
            ),
            "llm.token_count.prompt": 11,
            "llm.token_count.completion": 2,
            "tag.tags": ["vision"],
            "session.id": "s-9",
        },
    )
    bad = span(  # a tool message that names no call: the store refuses it
        "3333333333333333",
        {
            "openinference.span.kind": "LLM",
            "llm.input_messages.0.message.role": "tool",
            "llm.input_messages.0.message.content": "result",
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.content": "ok",
        },
        start_ms=500,
    )
    chain = span("4444444444444444", {"openinference.span.kind": "CHAIN", "input.value": "x"}, parent=None)
    out = mapped(good, bad, chain)
    assert out.ignored == 1 and out.llm_spans == 2
    assert [sid for sid, _ in out.rejected] == ["3333333333333333"]
    assert "tool_call_id" in out.rejected[0][1]
    [t] = out.trajectories
    assert t["messages"][0] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
        ],
    }
    assert t["messages"][1]["tool_calls"][0]["function"] == {"name": "identify", "arguments": "{}"}
    assert t["tools"] == [{"type": "function", "function": {"name": "identify"}}]
    assert t["metadata"]["params"] == {"temperature": 0.5}  # only the sampling settings the SDK keeps
    assert t["metadata"]["usage"]["total_tokens"] == 13 and t["metadata"]["session_id"] == "s-9"
    assert t["tags"] == ["vision"] and t["model"] == "claude-x"
    assert (
        "rejected" not in out.rejection_message()
        and "1 LLM call span(s) not stored" in out.rejection_message()
    )


def test_event_styles_old_per_message_events_and_the_operation_details_event() -> None:
    old = span(
        "5555555555555555",
        {"gen_ai.system": "openai", "gen_ai.request.model": "m"},
        events=[
            ("gen_ai.system.message", {"content": "be kind"}),
            ("gen_ai.user.message", {"content": "hi"}),
            (
                "gen_ai.assistant.message",
                {
                    "tool_calls": json.dumps(
                        [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
                    )
                },
            ),
            ("gen_ai.tool.message", {"content": "done", "id": "c"}),
            ("gen_ai.choice", {"index": 0, "finish_reason": "stop", "message": {"content": "bye"}}),
        ],
    )
    details = span(
        "6666666666666666",
        {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m2"},
        trace=OTHER_TRACE,
        events=[
            (
                "gen_ai.client.inference.operation.details",
                {
                    "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "sys"}]),
                    "gen_ai.input.messages": json.dumps(
                        [{"role": "user", "parts": [{"type": "text", "content": "q"}]}]
                    ),
                    "gen_ai.output.messages": json.dumps(
                        [
                            {
                                "role": "assistant",
                                "parts": [{"type": "text", "content": "a"}],
                                "finish_reason": "length",
                            }
                        ]
                    ),
                },
            )
        ],
        status={"code": 2, "message": "cut short"},
    )
    out = mapped(old, details)
    assert out.rejected == [] and len(out.trajectories) == 2
    from_events, from_details = sorted(out.trajectories, key=lambda t: t["id"])  # TRACE sorts first
    assert from_events["messages"] == [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c", "content": "done"},
        {"role": "assistant", "content": "bye"},
    ]
    assert from_details["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    assert from_details["metadata"]["finish_reason"] == "length"
    assert from_details["metadata"]["error"] == {"type": "Error", "message": "cut short"}


def test_which_spans_are_calls_and_the_run_attributes() -> None:
    q = [{"role": "user", "parts": [{"type": "text", "content": "q"}]}]
    a = [{"role": "assistant", "parts": [{"type": "text", "content": "a"}]}]
    msgs = {"gen_ai.input.messages": json.dumps(q), "gen_ai.output.messages": json.dumps(a)}
    root = span(
        "7777777777777777",
        {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "planner",
            **msgs,
            "learnloop.scenario": "plans",
            "learnloop.metadata.run": 3,
        },
        parent=None,
    )
    embed = span("8888888888888888", {"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "e"})
    chat = span(
        "9999999999999999", {"gen_ai.operation.name": "chat", **msgs, "learnloop.scenario": "ignored"}
    )
    out = mapped(root, embed, chat, resource={"learnloop.scenario": "from-resource"})
    assert out.ignored == 2 and out.llm_spans == 1  # the agent span and the embeddings are not calls
    [t] = out.trajectories
    # resource < the call's span < the trace's root span
    assert t["scenario"] == "plans" and t["agent"] == "planner" and t["metadata"]["run"] == 3
    bad = mapped(chat, resource={"learnloop.source": "somewhere"})
    assert bad.trajectories == [] and "source" in bad.rejected[0][1]
