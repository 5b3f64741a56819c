"""The OpenAI routes through the official client (sync, async,
streaming) against a live server, both databases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from serving_support import PROMPTS, make_adapter, one_torch_thread, version_row

from api_support import live_server
from learnloop.api import create_app
from learnloop.config import Settings
from learnloop.registry import alias_history, move
from learnloop.serving.local import LocalBackend
from learnloop.serving.runtime import ServedCapture, ServingRuntime
from learnloop.store.db import Database
from learnloop.store.models import ModelVersion, Trajectory


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {f"v000{i}": make_adapter(tiny_model_dir, root / f"v000{i}", seed=i) for i in (1, 2)}


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> Iterator[LocalBackend]:
    with one_torch_thread():
        b = LocalBackend(tiny_model_dir, device="cpu", max_batch_size=8, max_queued=32)
        yield b
        b.close()


def add_versions(db: Database, base: Path, adapters: dict[str, Path]) -> None:
    with db.session() as s:
        for vid, path in adapters.items():
            s.add(version_row(vid, base, path))


@pytest.fixture
def server(
    db: Database, settings: Settings, backend: LocalBackend, adapters: dict[str, Path], tiny_model_dir: Path
) -> Iterator[tuple[str, ServingRuntime, Database]]:
    add_versions(db, tiny_model_dir, adapters)
    runtime = ServingRuntime(backend, db, poll_seconds=0.1, capture=ServedCapture(settings, db))
    app = create_app(settings, db, watch_inbox=False, serving=runtime)
    with live_server(app) as url:
        yield url, runtime, db


def _converged(runtime: ServingRuntime, version: str, candidate: str | None, timeout: float = 60) -> None:
    """Wait until the server applied the alias row (loading a version takes a while on a busy CPU)."""
    deadline = time.monotonic() + timeout
    while True:
        a = runtime.aliases.get("learnloop")
        if a is not None and (a.version_id, a.candidate_id) == (version, candidate):
            return
        assert time.monotonic() < deadline, f"the server did not converge on {version}/{candidate}: {a}"
        time.sleep(0.05)


def _stored(db: Database, runtime: ServingRuntime, tid: str) -> Trajectory:
    # An answer is captured once its response has ended, which the client can see first.
    deadline = time.monotonic() + 60
    while True:
        assert runtime.capture.flush(10)
        with db.read_session() as s:
            row = s.get(Trajectory, tid)
        if row is not None:
            return row
        assert time.monotonic() < deadline, f"trajectory {tid} was not captured"
        time.sleep(0.05)


def test_sync_client_chat_models_capture_and_feedback(server) -> None:  # noqa: ANN001
    url, runtime, db = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    raw = client.chat.completions.with_raw_response.create(
        model="learnloop",
        messages=PROMPTS[0],
        temperature=0,
        max_tokens=8,
        extra_headers={"x-learnloop-scenario": "support"},
    )
    r = raw.parse()
    assert raw.headers["x-learnloop-version"] == "base" and r.model == "base"
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason in ("stop", "length")
    assert (
        r.usage.completion_tokens <= 8
        and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    )
    names = [m.id for m in client.models.list().data]
    assert names[:2] == ["learnloop", "base"] and {"v0001", "v0002"} <= set(names)
    # the completion id is the captured trajectory's id: feedback goes to the ingest route with it
    row = _stored(db, runtime, r.id)
    assert (row.source.value, row.model, row.scenario) == ("served", "base", "support")
    assert row.messages[-1] == {"role": "assistant", "content": r.choices[0].message.content}
    assert row.meta["finish_reason"] == r.choices[0].finish_reason and "cut" not in row.meta
    fb = httpx.post(f"{url}/v1/trajectories/{r.id}/feedback", json={"thumbs": 1})
    assert fb.status_code == 200, fb.text
    # a version named directly is loaded on first use and answers
    raw = client.chat.completions.with_raw_response.create(
        model="v0002",
        messages=PROMPTS[1],
        temperature=0,
        max_tokens=6,
        n=2,
        seed=1,
        stop=["zz"],
        metadata={"scenario": "triage"},
    )
    r2 = raw.parse()
    assert raw.headers["x-learnloop-version"] == "v0002" and len(r2.choices) == 2
    assert r2.choices[0].message.content == r2.choices[1].message.content  # greedy: both choices agree
    row = _stored(db, runtime, r2.id)
    assert (row.model, row.model_version, row.scenario) == ("v0002", "v0002", "triage")
    metrics = httpx.get(f"{url}/metrics").text  # the watch stage's counters see served traffic
    assert (
        'learnloop_serving_requests_total{status="ok",version="v0002"}' in metrics
        or 'learnloop_serving_requests_total{version="v0002",status="ok"}' in metrics
    )


def test_async_client_streaming(server) -> None:  # noqa: ANN001
    url, runtime, db = server

    async def run() -> tuple[list, str, str]:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused")
        whole = await client.chat.completions.create(
            model="v0001", messages=PROMPTS[3], temperature=0, max_tokens=12
        )
        stream = await client.chat.completions.create(
            model="v0001",
            messages=PROMPTS[3],
            temperature=0,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        return chunks, whole.choices[0].message.content, whole.id

    chunks, whole, _ = asyncio.run(run())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # token by token
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "length"
    ]
    assert chunks[-1].usage.completion_tokens == 12 and not chunks[-1].choices
    assert len({c.id for c in chunks}) == 1 and chunks[0].model == "v0001"
    row = _stored(db, runtime, chunks[0].id)
    assert row.messages[-1]["content"] == text and row.meta["params"]["stream"] is True
    # the sync client streams too
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    with client.chat.completions.create(
        model="v0001", messages=PROMPTS[3], temperature=0, max_tokens=12, stream=True
    ) as s:
        assert "".join(c.choices[0].delta.content or "" for c in s if c.choices) == whole


def test_errors_use_openai_shape_and_status(server, backend: LocalBackend) -> None:  # noqa: ANN001
    url, runtime, db = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="v0999", messages=PROMPTS[0])
    assert e.value.body["code"] == "model_not_found" and "v0999" in e.value.body["message"]
    cases = [
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
        ({"temperature": 5}, "temperature"),
        ({"max_tokens": 100000}, "max_tokens"),
        ({"tools": [{"type": "function", "function": {"parameters": {}}}]}, "tools[0].function.name"),
        ({"tools": "all of them"}, "tools"),
        ({"messages": [{"role": "user", "content": "two plus two " * 400}]}, "messages"),
        ({"n": 0}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ]
    for extra, param in cases:
        body = {"model": "base", "messages": PROMPTS[0], **extra}
        resp = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert resp.status_code == 400, (extra, resp.text)
        err = resp.json()["error"]
        assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"], (
            extra,
            err,
        )
    long = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "base", "messages": [{"role": "user", "content": "two plus two " * 400}]},
    ).json()
    assert (
        "context is 512 tokens" in long["error"]["message"]
        and long["error"]["code"] == "context_length_exceeded"
    )
    assert httpx.post(f"{url}/v1/chat/completions", content=b"{not json").status_code == 400
    # over capacity: 429 with Retry-After, in OpenAI's shape
    saved = backend.engine.max_queued, backend.engine.max_batch_size
    backend.engine.max_queued, backend.engine.max_batch_size = 0, 0
    try:
        resp = httpx.post(f"{url}/v1/chat/completions", json={"model": "base", "messages": PROMPTS[0]})
        assert resp.status_code == 429 and resp.headers["retry-after"] == "1"
        assert resp.json()["error"]["code"] == "over_capacity"
    finally:
        backend.engine.max_queued, backend.engine.max_batch_size = saved


def test_client_disconnect_mid_stream_stops_generation_and_captures_the_cut(
    server, backend: LocalBackend
) -> None:  # noqa: ANN001
    url, runtime, db = server
    body = {"model": "base", "messages": PROMPTS[2], "max_tokens": 450, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        lines = resp.iter_lines()
        got = [next(lines) for _ in range(6)]
    tid = next(line for line in got if line.startswith("data:")).split('"id":"')[1].split('"')[0]
    deadline = time.monotonic() + 60
    while backend.engine.load != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert backend.engine.load == (0, 0)  # the slot is free again
    row = _stored(db, runtime, tid)
    assert row.meta["cut"] is True and row.meta["finish_reason"] == "cancelled"
    assert row.meta["usage"]["completion_tokens"] < 450


def test_alias_moves_are_followed_and_split_is_sticky(server) -> None:  # noqa: ANN001
    url, runtime, db = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")

    def served(user: str | None = None) -> str:
        kwargs = {"user": user} if user else {}
        raw = client.chat.completions.with_raw_response.create(
            model="learnloop", messages=PROMPTS[0], max_tokens=2, **kwargs
        )
        return raw.headers["x-learnloop-version"]

    assert served() == "base"
    move(db, None, "learnloop", "set", "v0001", actor="test", reason="promote")
    deadline = time.monotonic() + 60
    while served() != "v0001":
        assert time.monotonic() < deadline, "the server did not follow the alias"
        time.sleep(0.05)
    with pytest.raises(Exception, match="v0404"):
        move(db, None, "learnloop", "set", "v0404", actor="test")
    move(db, None, "learnloop", "split", "v0002", share=0.5)
    _converged(runtime, "v0001", "v0002")
    sides = {u: served(u) for u in (f"user{i}" for i in range(16))}
    assert set(sides.values()) == {"v0001", "v0002"}  # both sides get traffic
    assert all(served(u) == side for u, side in list(sides.items())[:6])  # and each user stays on their side


def test_shadow_runs_the_candidate_unseen_and_captures_both(server) -> None:  # noqa: ANN001
    url, runtime, db = server
    move(db, None, "learnloop", "set", "v0001", actor="test")
    move(db, None, "learnloop", "split", "v0002", shadow=1.0)
    _converged(runtime, "v0001", "v0002")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    raw = client.chat.completions.with_raw_response.create(
        model="learnloop", messages=PROMPTS[1], max_tokens=4
    )
    assert raw.headers["x-learnloop-version"] == "v0001"
    tid = raw.parse().id
    deadline = time.monotonic() + 60
    while True:
        runtime.capture.flush(5)
        with db.read_session() as s:
            shadows = [
                t for t in s.query(Trajectory).filter(Trajectory.group_id == tid) if t.meta.get("shadow")
            ]
        if shadows or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert shadows and shadows[0].model == "v0002" and shadows[0].meta["shadow_of"] == tid


def test_api_key_and_capture_off(db: Database, settings: Settings, backend: LocalBackend) -> None:
    s = settings.model_copy(update={"api_token": None})
    s.serving.api_key = __import__("pydantic").SecretStr("sk-inference")
    runtime = ServingRuntime(backend, db, capture=None)  # serving.capture = false
    with live_server(create_app(s, db, watch_inbox=False, serving=runtime)) as url:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        r = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-inference").chat.completions.create(
            model="base", messages=PROMPTS[0], max_tokens=2
        )
        assert r.choices[0].message.content is not None
    with db.read_session() as session:
        assert session.query(Trajectory).count() == 0


def test_no_model_answers_503_with_the_reason(db: Database, settings: Settings) -> None:
    from learnloop.errors import ConfigError
    from learnloop.serving.setup import default_base_model

    with pytest.raises(ConfigError, match="learnloop models prepare smollm2"):
        default_base_model(settings)
    app = create_app(settings, db, watch_inbox=False, serving_off_reason="No base model to serve: run x")
    with live_server(app) as url:
        resp = httpx.post(f"{url}/v1/chat/completions", json={"model": "base", "messages": PROMPTS[0]})
        assert resp.status_code == 503 and "No base model" in resp.json()["error"]["message"]
        assert httpx.get(f"{url}/healthz").status_code == 200  # the rest of the server runs


def test_alias_routes_move_and_split(
    db: Database, settings: Settings, tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    from pydantic import SecretStr

    add_versions(db, tiny_model_dir, adapters)
    with db.session() as session:
        session.add(version_row("v0009", tiny_model_dir, adapters["v0001"], gate=None))
    s = settings.model_copy(update={"api_token": SecretStr("tok")})
    auth = {"Authorization": "Bearer tok"}
    with live_server(create_app(s, db, watch_inbox=False)) as url:
        assert httpx.get(f"{url}/v1/aliases").json() == []
        assert httpx.put(f"{url}/v1/aliases/learnloop", json={"version": "v0001"}).status_code == 401
        r = httpx.put(f"{url}/v1/aliases/learnloop", json={"version": "v0001", "reason": "ab"}, headers=auth)
        assert r.status_code == 200 and r.json()["version"] == "v0001"
        r = httpx.put(f"{url}/v1/aliases/learnloop", json={"version": "v0404"}, headers=auth)
        assert r.status_code == 404 and "v0404" in r.json()["error"]
        r = httpx.put(
            f"{url}/v1/aliases/learnloop/split", json={"candidate": "v0002", "split": 0.1}, headers=auth
        )
        assert r.json() == {
            "name": "learnloop",
            "version": "v0001",
            "candidate": "v0002",
            "split": 0.1,
            "shadow": 0.0,
        }
        r = httpx.put(
            f"{url}/v1/aliases/learnloop/split", json={"candidate": "v0002", "split": 2}, headers=auth
        )
        assert r.status_code == 422 and "split" in r.text
        r = httpx.put(f"{url}/v1/aliases/learnloop", json={"version": "base"}, headers=auth)
        assert r.json()["version"] == "base"
        # The registry's gate holds here too: a version never evaluated needs force=true,
        # and the error says so.
        r = httpx.put(f"{url}/v1/aliases/learnloop", json={"version": "v0009"}, headers=auth)
        assert (
            r.status_code == 409
            and "v0009 has no gate verdict" in r.json()["error"]
            and "force=true" in r.json()["error"]
        )
        r = httpx.put(
            f"{url}/v1/aliases/learnloop",
            json={"version": "v0009", "force": True, "actor": "ops"},
            headers=auth,
        )
        assert r.status_code == 200 and r.json()["version"] == "v0009"
        assert alias_history(db, "learnloop", 1)[0]["action"] == "force"


def test_versions_past_max_adapters_are_unloaded_and_a_broken_one_is_a_409(
    db: Database,
    settings: Settings,
    backend: LocalBackend,
    adapters: dict[str, Path],
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    add_versions(db, tiny_model_dir, adapters)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    with db.session() as s:
        s.add(ModelVersion(id="v0003", base_model=str(tiny_model_dir), artifact_path=str(broken)))
    runtime = ServingRuntime(backend, db, capture=None, max_adapters=1)
    with live_server(create_app(settings, db, watch_inbox=False, serving=runtime)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for vid in ("v0001", "v0002", "v0001"):
            assert client.chat.completions.create(model=vid, messages=PROMPTS[0], max_tokens=2).model == vid
            assert [n for n in backend.list() if n != "base"] == [vid]  # the other one was unloaded
        with pytest.raises(
            openai.ConflictError, match="v0003 could not be loaded|'v0003' could not be loaded"
        ):
            client.chat.completions.create(model="v0003", messages=PROMPTS[0], max_tokens=2)
