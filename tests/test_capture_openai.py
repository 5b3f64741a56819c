"""wrap_openai against a real local HTTP server speaking the OpenAI chat-completions protocol.

The server is a small FastAPI app run by uvicorn: it answers a tool call when tools are offered
and the last message is from the user, otherwise text; with ``stream=True`` it sends the same
answer as server-sent event chunks (usage last when asked for). The app-side objects from a
wrapped client must equal those from a plain client, and the record must match the exchange.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

import learnloop
from api_support import live_server
from capture_support import load, stored_ids
from learnloop.capture import CaptureClient, wrap_openai
from learnloop.config import Settings
from learnloop.store.db import Database

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def _answer(body: dict) -> dict:
    last = body["messages"][-1]
    if body.get("tools") and last["role"] == "user":
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_w1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        }
    return {"role": "assistant", "content": f"You said: {last['content']} (turn {len(body['messages'])})"}


def openai_protocol_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        body = await request.json()
        if body["messages"][-1].get("content") == "please fail":
            return JSONResponse(
                {"error": {"message": "upstream exploded", "type": "server_error"}}, status_code=500
            )
        msg = _answer(body)
        n = len(body["messages"])
        usage = {"prompt_tokens": 10 * n, "completion_tokens": 7, "total_tokens": 10 * n + 7}
        finish = "tool_calls" if msg.get("tool_calls") else "stop"
        base = {"id": f"chatcmpl-{n}", "created": 1_700_000_000, "model": "fake-" + body["model"]}
        if not body.get("stream"):
            return {
                **base,
                "object": "chat.completion",
                "usage": usage,
                "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
            }

        def chunk(delta: dict, finish_reason=None, **extra) -> str:
            data = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                **extra,
            }
            return f"data: {json.dumps(data)}\n\n"

        def events():
            yield chunk({"role": "assistant", "content": ""})
            if msg.get("tool_calls"):
                call = msg["tool_calls"][0]
                yield chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": call["function"]["name"], "arguments": ""},
                            }
                        ]
                    }
                )
                args = call["function"]["arguments"]
                for i in range(0, len(args), 5):
                    yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 5]}}]})
            else:
                words = msg["content"].split(" ")
                for i, w in enumerate(words):
                    yield chunk({"content": w if i == 0 else " " + w})
            yield chunk({}, finish)
            if (body.get("stream_options") or {}).get("include_usage"):
                last = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                yield f"data: {json.dumps(last)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def llm_url():
    with live_server(openai_protocol_app()) as url:
        yield url + "/v1"


def _capture(settings: Settings, tmp_path: Path, db: Database):
    client = CaptureClient(settings, database=db, flush_interval=0.05, spool_dir=tmp_path / "spool")
    yield client, db
    client.close(5)


@pytest.fixture
def capture(settings: Settings, tmp_path: Path, sqlite_db: Database):
    yield from _capture(settings, tmp_path, sqlite_db)


@pytest.fixture
def capture_both(settings: Settings, tmp_path: Path, db: Database):
    """The same, on SQLite and on PostgreSQL."""
    yield from _capture(settings, tmp_path, db)


def _clients(url: str, capture_client: CaptureClient, cls=openai.OpenAI, **defaults):
    plain = cls(base_url=url, api_key="sk-test", max_retries=0)
    wrapped = wrap_openai(
        cls(base_url=url, api_key="sk-test", max_retries=0), capture_client=capture_client, **defaults
    )
    return plain, wrapped


def _only(db: Database) -> dict:
    ids = stored_ids(db)
    assert len(ids) == 1, ids
    return load(db, ids.pop())


def test_sync_completion_is_unchanged_and_recorded(llm_url: str, capture_both) -> None:
    client, db = capture_both
    plain, wrapped = _clients(llm_url, client, scenario="weather", tags=["bot"])
    assert isinstance(wrapped, openai.OpenAI)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"}]
    kwargs = dict(model="m1", messages=messages, tools=TOOLS, temperature=0.2)
    got = wrapped.chat.completions.create(**kwargs)
    assert type(got) is openai.types.chat.ChatCompletion
    assert got.model_dump() == plain.chat.completions.create(**kwargs).model_dump()
    assert client.flush(30)

    rec = _only(db)
    assert rec["messages"][:2] == messages
    assert rec["messages"][2]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Oslo"}',
    }
    assert rec["tools"] == TOOLS and rec["model"] == "fake-m1"
    assert (rec["scenario"], rec["tags"]) == ("weather", ["bot"])
    meta = rec["metadata"]
    assert meta["usage"]["total_tokens"] == 27 and meta["finish_reason"] == "tool_calls"
    assert meta["latency_ms"] > 0 and meta["params"] == {"temperature": 0.2}


def test_sync_stream_passes_chunks_through_and_records_the_assembled_answer(llm_url: str, capture) -> None:
    client, db = capture
    plain, wrapped = _clients(llm_url, client)
    kwargs = dict(
        model="m1",
        messages=[{"role": "user", "content": "hello stream"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    stream = wrapped.chat.completions.create(**kwargs)
    assert isinstance(stream, openai.Stream)
    seen = [c.model_dump() for c in stream]
    assert seen == [c.model_dump() for c in plain.chat.completions.create(**kwargs)]
    assert len(seen) > 4
    assert client.flush(30)
    rec = _only(db)
    assert rec["messages"][-1] == {"role": "assistant", "content": "You said: hello stream (turn 1)"}
    assert rec["metadata"]["stream"] is True and rec["metadata"]["usage"]["completion_tokens"] == 7
    assert "stream_incomplete" not in rec["metadata"]


def test_stream_of_tool_call_deltas_is_reassembled(llm_url: str, capture) -> None:
    client, db = capture
    _, wrapped = _clients(llm_url, client)
    with wrapped.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Oslo?"}], tools=TOOLS, stream=True
    ) as stream:
        for _ in stream:
            pass
    assert client.flush(30)
    call = _only(db)["messages"][-1]["tool_calls"][0]
    assert call["id"] == "call_w1" and json.loads(call["function"]["arguments"]) == {"city": "Oslo"}


def test_stream_closed_early_is_recorded_as_incomplete(llm_url: str, capture) -> None:
    client, db = capture
    _, wrapped = _clients(llm_url, client)
    stream = wrapped.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "a b c d e f"}], stream=True
    )
    first = [next(stream), next(stream)]
    stream.close()
    del stream
    import gc

    gc.collect()
    assert client.flush(30)
    rec = _only(db)
    assert rec["metadata"]["stream_incomplete"] is True
    assert rec["messages"][-1]["content"] == first[1].choices[0].delta.content


def test_async_client_plain_and_streaming(llm_url: str, capture) -> None:
    client, db = capture
    plain, wrapped = _clients(llm_url, client, cls=openai.AsyncOpenAI, agent="async-bot")

    async def run():
        msgs = [{"role": "user", "content": "async hi"}]
        one = await wrapped.chat.completions.create(model="m", messages=msgs)
        ref = await plain.chat.completions.create(model="m", messages=msgs)
        stream = await wrapped.chat.completions.create(model="m", messages=msgs, stream=True)
        assert isinstance(stream, openai.AsyncStream)
        chunks = [c.model_dump() async for c in stream]
        ref_chunks = [
            c.model_dump()
            async for c in await plain.chat.completions.create(model="m", messages=msgs, stream=True)
        ]
        return one.model_dump(), ref.model_dump(), chunks, ref_chunks

    one, ref, chunks, ref_chunks = asyncio.run(run())
    assert one == ref and chunks == ref_chunks
    assert client.flush(30)
    recs = [load(db, i) for i in stored_ids(db)]
    assert len(recs) == 2 and all(r["agent"] == "async-bot" for r in recs)
    assert sorted(r["metadata"].get("stream", False) for r in recs) == [False, True]
    assert all(r["messages"][-1]["content"] == "You said: async hi (turn 1)" for r in recs)


def test_calls_inside_a_trajectory_build_one_agent_run(llm_url: str, capture) -> None:
    client, db = capture
    _, wrapped = _clients(llm_url, client)
    with client.trajectory(scenario="agent") as t:
        messages = [{"role": "user", "content": "Weather in Oslo?"}]
        first = wrapped.chat.completions.create(model="m", messages=messages, tools=TOOLS)
        messages.append(first.choices[0].message)  # apps append the SDK object itself
        messages.append({"role": "tool", "tool_call_id": "call_w1", "content": "sunny"})
        wrapped.chat.completions.create(model="m", messages=messages, tools=TOOLS)
        t.reward("helpful", 1)
    assert client.flush(30)
    rec = _only(db)
    assert rec["id"] == t.id and rec["scenario"] == "agent"
    assert [m["role"] for m in rec["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert rec["messages"][-1]["content"] == "You said: sunny (turn 3)"
    assert len(rec["metadata"]["llm_calls"]) == 2 and rec["scores"] == {"helpful": (1.0, "env")}


def test_failed_call_raises_as_before_and_is_recorded_with_the_error(llm_url: str, capture) -> None:
    client, db = capture
    _, wrapped = _clients(llm_url, client)
    with pytest.raises(openai.InternalServerError):
        wrapped.chat.completions.create(model="m", messages=[{"role": "user", "content": "please fail"}])
    assert client.flush(30)
    rec = _only(db)
    assert rec["metadata"]["error"]["type"] == "InternalServerError"
    assert rec["messages"] == [{"role": "user", "content": "please fail"}]


def test_wrapping_twice_records_once_and_rejects_non_clients(llm_url: str, capture) -> None:
    client, db = capture
    _, wrapped = _clients(llm_url, client)
    assert wrap_openai(wrapped, capture_client=client) is wrapped
    wrapped.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert client.flush(30) and len(stored_ids(db)) == 1
    with pytest.raises(TypeError, match="OpenAI"):
        learnloop.wrap_openai(object())


def test_concurrent_async_tasks_each_record_into_their_own_trajectory(llm_url: str, capture) -> None:
    client, db = capture
    _, wrapped = _clients(llm_url, client, cls=openai.AsyncOpenAI)

    async def agent(name: str) -> str:
        with client.trajectory(scenario=name) as t:
            for turn in range(3):
                await wrapped.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"{name}-{turn}"}]
                )
                await asyncio.sleep(0)
        return t.id

    async def run():
        return await asyncio.gather(*(agent(f"task{i}") for i in range(4)))

    ids = asyncio.run(run())
    assert client.flush(30)
    for i, tid in enumerate(ids):
        rec = load(db, tid)
        users = [m["content"] for m in rec["messages"] if m["role"] == "user"]
        assert users == [f"task{i}-{turn}" for turn in range(3)], rec["messages"]
        assert len(rec["metadata"]["llm_calls"]) == 3
    assert len(stored_ids(db)) == 4


def test_wrapper_takes_window_and_model(llm_url: str, capture) -> None:
    client, db = capture
    _, wrapped = _clients(
        llm_url, client, scenario="w", agent="router", window="batch-3", model="teacher-label"
    )
    wrapped.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])
    _, plain_defaults = _clients(llm_url, client, scenario="w2")
    plain_defaults.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])
    assert client.flush(30)
    with db.read_session() as s:
        from learnloop.store.models import Trajectory

        rows = {r.scenario: r for r in s.query(Trajectory).all()}
    assert (rows["w"].window_id, rows["w"].model, rows["w"].agent) == ("batch-3", "teacher-label", "router")
    assert (
        rows["w2"].model == "fake-m1" and rows["w2"].window_id and rows["w2"].window_id[:2] == "20"
    )  # assigned from time
