"""The served alias in front of an upstream provider: proxying over real HTTP, both databases.

The upstream is the demo's teacher, a real OpenAI-compatible server under uvicorn; in front of it
learnloop's own app (routes, runtime, capture, database) under uvicorn; the client is the official
``openai`` package or plain httpx.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from api_support import free_port
from learnloop.config import Settings
from learnloop.demo.task import SYSTEM, cases
from learnloop.demo.teacher import MODEL, TOOL, confidence_of, count_tokens
from learnloop.registry import move
from learnloop.store.db import Database
from learnloop.store.models import Source, Trajectory
from upstream_support import (
    KEY,
    KEY_ENV,
    TOOL_PIECES,
    gateway,
    gateway_settings,
    teacher_server,
    wait_for,
)

VERSION_HEADER = "x-learnloop-version"


@pytest.fixture(autouse=True)
def _teacher_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def _messages(i: int = 0) -> list[dict[str, str]]:
    return cases(100 + i, 1)[0].messages


def _streamed_chunks(url: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The chunks of a streamed chat completion from learnloop, each as it arrives."""
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=60
    ) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                yield json.loads(line[6:])


def test_plain_and_streamed_answers_pass_through(settings: Settings, db: Database) -> None:
    with teacher_server() as up:
        s = gateway_settings(settings, up.url)
        move(db, s, "learnloop", "set", "upstream:teacher", actor="test")
        case = cases(100, 1)[0]
        with gateway(s, db) as (url, runtime):
            wait_for(lambda: "learnloop" in runtime.aliases, "the alias to be read")
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="app-key", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="learnloop",
                messages=case.messages,
                n=2,
                seed=11,
                stop=["\n\n"],
                temperature=0.3,
                response_format={"type": "json_object"},
                user="alice",
                metadata={"scenario": "orders"},
            )
            reply = raw.parse()
            assert raw.headers[VERSION_HEADER] == "upstream:teacher"
            assert [c.message.content for c in reply.choices] == [case.teacher_answer()] * 2
            assert reply.model == "upstream:teacher"
            prompt_tokens = sum(count_tokens(m["content"]) for m in case.messages)
            assert reply.usage.prompt_tokens == prompt_tokens
            assert reply.usage.completion_tokens == 2 * len(range(0, len(case.teacher_answer()), 4))
            sent = up.requests[-1]
            assert sent["authorization"] == f"Bearer {KEY}"  # the upstream's key, not the app's
            body = sent["body"]
            assert body["model"] == MODEL and body["messages"] == case.messages
            assert (body["n"], body["seed"], body["stop"], body["temperature"]) == (2, 11, ["\n\n"], 0.3)
            assert body["response_format"] == {"type": "json_object"} and body["user"] == "alice"
            assert "metadata" not in body  # learnloop's own (the scenario), not forwarded

            # Streamed: chunks reach the client as the upstream sends them, usage on request.
            pieces, usage = [], None
            stream = client.chat.completions.create(
                model="learnloop",
                messages=case.messages,
                stream=True,
                stream_options={"include_usage": True},
            )
            for chunk in stream:
                pieces += [c.delta.content for c in chunk.choices if c.delta.content]
                usage = chunk.usage or usage
            # (pieces that arrive in one network read are sent on as one)
            assert "".join(pieces) == case.teacher_answer()
            assert usage is not None and usage.completion_tokens == len(
                range(0, len(case.teacher_answer()), 4)
            )

            # Sent on as they arrive: the first piece is here while the upstream still holds the rest.
            up.faults["kind"] = "hold_stream"
            got = []
            for chunk in _streamed_chunks(url, {"model": "learnloop", "messages": case.messages}):
                for choice in chunk["choices"]:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        got.append(text)
                        if len(got) == 1:
                            assert text == "first piece;" and not up.release.is_set()
                            up.release.set()
            assert got == ["first piece;", " second piece"]
            assert up.faults["released_after_first"] is True


def test_tool_calls_pass_through_plain_and_streamed(settings: Settings, db: Database) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": TOOL,
                "description": "Place the order.",
                "parameters": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
        }
    ]
    with teacher_server() as up:
        s = gateway_settings(settings, up.url)
        move(db, s, "learnloop", "set", "upstream:teacher", actor="test")
        case = cases(200, 1)[0]
        with gateway(s, db) as (url, runtime):
            wait_for(lambda: "learnloop" in runtime.aliases, "the alias to be read")
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
            reply = client.chat.completions.create(
                model="learnloop", messages=case.messages, tools=tools, tool_choice="auto"
            )
            choice = reply.choices[0]
            assert choice.finish_reason == "tool_calls" and choice.message.content is None
            (call,) = choice.message.tool_calls
            assert call.function.name == TOOL and json.loads(call.function.arguments) == case.answer
            assert up.requests[-1]["body"]["tools"] == tools
            assert up.requests[-1]["body"]["tool_choice"] == "auto"
            calls, finish = {}, None
            for chunk in client.chat.completions.create(
                model="learnloop", messages=case.messages, tools=tools, stream=True
            ):
                for c in chunk.choices:
                    for tc in c.delta.tool_calls or []:
                        slot = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                        slot["name"] += tc.function.name or ""
                        slot["arguments"] += tc.function.arguments or ""
                    finish = c.finish_reason or finish
            assert finish == "tool_calls"
            assert calls[0]["name"] == TOOL and json.loads(calls[0]["arguments"]) == case.answer
            # A tool result sent back goes on as the client wrote it.
            follow = [
                *case.messages,
                choice.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "order 77 placed"},
            ]
            client.chat.completions.create(model="learnloop", messages=follow, tools=tools)
            assert up.requests[-1]["body"]["messages"][-1] == follow[-1]
            assert up.requests[-1]["body"]["messages"][-2]["tool_calls"][0]["id"] == call.id


def test_streamed_tool_call_deltas_go_on_as_they_arrive_and_are_captured_whole(
    settings: Settings, db: Database
) -> None:
    """The upstream sends a tool call in three pieces and holds the stream after each until the test
    has read that piece from learnloop: each reaches the client as its own chunk, in order, before
    the upstream sends its final chunk; the client's assembled call is the whole call (not doubled by
    the end), and the capture stores the whole call as teacher data."""
    gates = [threading.Event() for _ in TOOL_PIECES]
    tools = [{"type": "function", "function": {"name": "place_order", "parameters": {"type": "object"}}}]
    with teacher_server() as up:
        s = gateway_settings(settings, up.url, capture={"source_sample_rates": {"teacher": 1.0}})
        move(db, s, "learnloop", "set", "upstream:teacher", actor="test")
        up.faults.update(kind="tool_stream", gates=gates)
        with gateway(s, db) as (url, runtime):
            wait_for(lambda: "learnloop" in runtime.aliases, "the alias to be read")
            received, finish, rid = [], None, None
            body = {"model": "learnloop", "messages": _messages(), "tools": tools}
            for chunk in _streamed_chunks(url, body):
                rid = chunk["id"]
                for choice in chunk["choices"]:
                    deltas = (choice.get("delta") or {}).get("tool_calls")
                    if deltas:
                        assert finish is None
                        k = len(received)
                        # Still held upstream: this piece came on before the next one was sent.
                        assert not gates[k].is_set() and not up.faults.get("final_sent")
                        received.append(deltas)
                        gates[k].set()
                    finish = choice.get("finish_reason") or finish
            assert received == [[p] for p in TOOL_PIECES]  # one chunk per piece, in order, as sent
            assert finish == "tool_calls"
            args = "".join(p["function"]["arguments"] for p in TOOL_PIECES)
            assert runtime.capture.flush(60)
    with db.read_session() as session:
        t = session.get(Trajectory, rid)
        assert t is not None and (t.source, t.model_version) == (Source.teacher, "upstream:teacher")
        (call,) = t.messages[-1]["tool_calls"]
        assert call["id"] == "call_7" and call["function"]["name"] == "place_order"
        stored = call["function"]["arguments"]
        assert (json.loads(stored) if isinstance(stored, str) else stored) == json.loads(args)
        assert t.meta["finish_reason"] == "tool_calls"
        assert t.meta["usage"] == {"prompt_tokens": 9, "completion_tokens": 6}


def test_upstream_errors_keep_openai_shape(settings: Settings, db: Database) -> None:
    with teacher_server() as up:
        s = gateway_settings(settings, up.url, upstream={"timeout": 0.5})
        move(db, s, "learnloop", "set", "upstream:teacher", actor="test")
        body = {"model": "learnloop", "messages": _messages()}
        with gateway(s, db) as (url, runtime):
            wait_for(lambda: "learnloop" in runtime.aliases, "the alias to be read")

            def post(**extra: object) -> httpx.Response:
                return httpx.post(f"{url}/v1/chat/completions", json={**body, **extra}, timeout=60)

            for stream in (False, True):
                up.faults["kind"] = "429"
                r = post(stream=stream)
                assert r.status_code == 429 and r.headers["retry-after"] == "7"
                err = r.json()["error"]
                assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
                assert err["message"] == "upstream teacher: Rate limit reached for requests"
                up.faults["kind"] = "500"
                r = post(stream=stream)
                assert r.status_code == 502 and r.json()["error"]["message"] == "upstream teacher: boom"
                up.faults["kind"] = "400"
                r = post(stream=stream)
                assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
                up.faults["kind"] = "hold"  # answers only once released: after the 0.5 s timeout
                r = post(stream=stream)
                assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
            up.release.set()
            up.faults.clear()
            # The official client sees the same statuses.
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
            up.faults["kind"] = "429"
            with pytest.raises(openai.RateLimitError) as info:
                client.chat.completions.create(**body)
            assert info.value.response.headers["retry-after"] == "7"
            up.faults.clear()
            assert client.chat.completions.create(**body).choices[0].message.content
        # A wrong key and an unreachable host: the server's configuration, said as such (502).
        dead = f"http://127.0.0.1:{free_port()}"
        for entry, code, words in (
            ({"api_key_env": "GATEWAY_TEST_WRONG_KEY"}, None, "GATEWAY_TEST_WRONG_KEY"),
            ({"base_url": f"{dead}/v1"}, "upstream_unreachable", "cannot be reached"),
        ):
            import os

            os.environ["GATEWAY_TEST_WRONG_KEY"] = "sk-wrong"
            try:
                s2 = gateway_settings(settings, up.url, upstream=entry)
                with gateway(s2, db) as (url, runtime):
                    wait_for(lambda: "learnloop" in runtime.aliases, "the alias to be read")
                    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
                    assert r.status_code == 502, r.text
                    assert words in r.json()["error"]["message"]
                    assert code is None or r.json()["error"]["code"] == code
            finally:
                del os.environ["GATEWAY_TEST_WRONG_KEY"]


def test_concurrency_cap_holds_requests_and_429s_past_the_timeout(settings: Settings, db: Database) -> None:
    with teacher_server() as up:
        s = gateway_settings(settings, up.url, upstream={"max_concurrency": 1, "timeout": 1.0})
        move(db, s, "learnloop", "set", "upstream:teacher", actor="test")
        body = {"model": "learnloop", "messages": _messages()}
        with gateway(s, db) as (url, runtime):
            wait_for(lambda: "learnloop" in runtime.aliases, "the alias to be read")
            up.faults["kind"] = "trickle"
            first: dict[str, httpx.Response] = {}
            t = threading.Thread(
                target=lambda: first.update(
                    r=httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=60)
                )
            )
            t.start()
            # A long answer holds the only slot: the next request waits its timeout for one, then 429.
            wait_for(lambda: up.faults.get("held") == 1, "the first request to reach the upstream")
            r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert "max_concurrency" in r.json()["error"]["message"]
            up.release.set()
            t.join(60)
            assert first["r"].status_code == 200 and '"done"' in first["r"].text
            up.faults.clear()
            ok = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)  # the slot is free again
            assert ok.status_code == 200


def test_split_between_an_upstream_and_a_version_is_sticky_and_counted(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    from serving_support import version_row

    from upstream_support import adapter_folder

    with db.session() as session:
        session.add(version_row("v0001", "base-model", adapter_folder(tmp_path, "v0001")))
    with teacher_server() as up:
        s = gateway_settings(settings, up.url)
        move(db, s, "learnloop", "set", "upstream:teacher", actor="test")
        move(db, s, "learnloop", "split", "v0001", share=0.5, actor="test")
        with gateway(s, db) as (url, runtime):
            wait_for(
                lambda: (runtime.aliases.get("learnloop") or object()).__dict__.get("candidate_id"), "split"
            )
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
            seen: dict[str, set[str]] = {}
            for i in range(40):
                user = f"user-{i % 10}"
                raw = client.chat.completions.with_raw_response.create(
                    model="learnloop", messages=_messages(i), user=user
                )
                seen.setdefault(user, set()).add(raw.headers[VERSION_HEADER])
            assert all(len(v) == 1 for v in seen.values())  # each user stays on one side
            sides = {next(iter(v)) for v in seen.values()}
            assert sides == {"upstream:teacher", "v0001"}
            runtime.flush_traffic()
            from learnloop.store.traffic import totals

            with db.read_session() as session:
                counts = {t.target: t.requests for t in totals(session, alias="learnloop")}
            users = {t: sum(1 for u, v in seen.items() if t in v) * 4 for t in sides}
            assert counts == users
            # The other way round: a version serves, an upstream takes a share.
            move(db, s, "learnloop", "set", "v0001", actor="test")
            move(db, s, "learnloop", "split", "upstream:teacher", share=1.0, actor="test")
            wait_for(
                lambda: getattr(runtime.aliases.get("learnloop"), "candidate_id", None) == "upstream:teacher",
                "the reverse split",
            )
            raw = client.chat.completions.with_raw_response.create(model="learnloop", messages=_messages(99))
            assert raw.headers[VERSION_HEADER] == "upstream:teacher"


def test_alias_moves_to_an_upstream_through_cli_and_api(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    import subprocess

    from fastapi.testclient import TestClient

    from api_support import LEARNLOOP, cli_env
    from learnloop.api import create_app
    from learnloop.registry import alias_history

    config = tmp_path / "learnloop.toml"
    config.write_text(
        f'database_url = "{db.url}"\n\n[[upstreams]]\nname = "teacher"\nbase_url = "http://127.0.0.1:9/v1"\n'
        f'model = "{MODEL}"\napi_key_env = "{KEY_ENV}"\n'
    )
    env = cli_env(tmp_path / "data", LEARNLOOP_CONFIG=str(config))
    out = subprocess.run(
        [*LEARNLOOP, "alias", "set", "learnloop", "upstream:teacher"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    bad = subprocess.run(
        [*LEARNLOOP, "alias", "set", "learnloop", "upstream:nope"], env=env, capture_output=True, text=True
    )
    assert bad.returncode != 0 and "No upstream 'nope'" in bad.stderr and "teacher" in bad.stderr
    entry = alias_history(db, "learnloop")[0]
    assert (
        entry["to"] == "upstream:teacher" and entry["action"] == "set" and entry["actor"].startswith("local:")
    )
    s = Settings(
        data_dir=tmp_path / "data",
        upstreams=[{"name": "teacher", "base_url": "http://127.0.0.1:9/v1", "model": MODEL}],
    )
    with TestClient(create_app(s, db, watch_inbox=False)) as api:
        r = api.put("/v1/aliases/learnloop", json={"version": "base", "actor": "api"})
        assert r.status_code == 200, r.text
        r = api.put("/v1/aliases/learnloop", json={"version": "upstream:teacher", "actor": "api"})
        assert r.status_code == 200 and r.json()["version"] == "upstream:teacher"
        r = api.put("/v1/aliases/learnloop", json={"version": "upstream:other"})
        assert r.status_code == 404 and "teacher" in r.text
        r = api.put("/v1/aliases/learnloop", json={"version": "upstream:bad name"})
        assert r.status_code == 422
    assert [e["to"] for e in alias_history(db, "learnloop")[:3]] == [
        "upstream:teacher",
        None,
        "upstream:teacher",
    ]


def test_confidence_from_logprobs_is_kept_but_not_shown_unasked(settings: Settings, db: Database) -> None:
    with teacher_server() as up:
        s = gateway_settings(settings, up.url, upstream={"confidence_from_logprobs": True})
        move(db, s, "learnloop", "set", "upstream:teacher", actor="test")
        case = cases(300, 1)[0]
        with gateway(s, db) as (url, runtime):
            wait_for(lambda: "learnloop" in runtime.aliases, "the alias to be read")
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
            reply = client.chat.completions.create(model="learnloop", messages=case.messages)
            assert up.requests[-1]["body"]["logprobs"] is True  # asked for the capture's confidence
            assert reply.choices[0].logprobs is None  # the client did not ask
            asked = client.chat.completions.create(model="learnloop", messages=case.messages, logprobs=True)
            tokens = [t.token for t in asked.choices[0].logprobs.content]
            assert "".join(tokens) == case.teacher_answer()
            runtime.capture.flush(30)
            got = httpx.get(f"{url}/v1/trajectories/{reply.id}").json()
            assert got["metadata"]["confidence"] == pytest.approx(confidence_of(case.message), abs=1e-3)
    assert SYSTEM  # the demo's prompt carries its instruction


def test_dashboard_moves_the_alias_to_an_upstream_and_shows_the_shares(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    from serving_support import version_row

    from upstream_support import adapter_folder

    with db.session() as session:
        session.add(version_row("v0001", "base-model", adapter_folder(tmp_path, "v0001")))
    with teacher_server() as up:
        s = gateway_settings(settings, up.url, serving={"price_per_1k_tokens": {"input": 0.0, "output": 0.5}})
        with gateway(s, db) as (url, runtime):
            page = httpx.get(f"{url}/serving", timeout=60).text
            assert "/ui/aliases/learnloop/target?target=upstream%3Ateacher" in page and MODEL in page
            r = httpx.post(
                f"{url}/ui/aliases/learnloop/target", params={"target": "upstream:teacher"}, timeout=60
            )
            assert r.status_code == 200 and r.json()["changed"] is True, r.text
            bad = httpx.post(
                f"{url}/ui/aliases/learnloop/target", params={"target": "upstream:nope"}, timeout=60
            )
            assert bad.status_code == 404
            wait_for(
                lambda: getattr(runtime.aliases.get("learnloop"), "version_id", None) == "upstream:teacher",
                "",
            )
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
            for i in range(6):
                client.chat.completions.create(model="learnloop", messages=_messages(i))
            move(db, s, "learnloop", "set", "v0001", actor="test")
            wait_for(lambda: runtime.aliases["learnloop"].version_id == "v0001", "the move")
            for i in range(2):
                client.chat.completions.create(model="learnloop", messages=_messages(i))
            runtime.flush_traffic()
            page = httpx.get(f"{url}/serving", timeout=60).text
    assert "75.0%" in page and "25.0%" in page  # 6 of 8 by the teacher, 2 by v0001
    assert "saved" in page and "on 2 requests its own models answered" in page
    assert KEY not in page
