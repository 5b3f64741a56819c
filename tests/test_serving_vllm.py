"""VllmBackend against a fake vLLM server speaking the same protocol;
then behind learnloop's OpenAI routes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import openai
import pytest
from serving_support import version_row
from vllm_fake import BASE_NAME, fake_vllm_app

from api_support import live_server
from learnloop.api import create_app
from learnloop.config import Settings
from learnloop.errors import NotFound
from learnloop.registry import move
from learnloop.serving.backend import ChatRequest
from learnloop.serving.runtime import ServedCapture, ServingRuntime
from learnloop.serving.vllm import VllmBackend
from learnloop.store.db import Database
from learnloop.store.models import Trajectory

ASK = [{"role": "user", "content": "hello there"}]


def test_backend_loads_adapters_and_routes_by_model(tmp_path: Path) -> None:
    app = fake_vllm_app()
    with live_server(app) as url:
        b = VllmBackend(url)
        assert b.base_name == BASE_NAME and b.list() == ["base"]
        b.load_adapter("v0001", tmp_path / "v0001")
        b.load_adapter("v0001", tmp_path / "v0001")  # loaded: a no-op, never a reload under the same name
        assert app.state.loras == {"v0001": str(tmp_path / "v0001")} and b.list() == ["base", "v0001"]
        assert b.chat("v0001", ChatRequest(messages=ASK))[0].text == "v0001 says: hello there"
        assert b.chat("base", ChatRequest(messages=ASK))[0].text == f"{BASE_NAME} says: hello there"
        assert "".join(b.stream("v0001", ChatRequest(messages=ASK))) == "v0001 says: hello there"

        async def chunks() -> list:
            return [c async for c in b.astream("v0001", ChatRequest(messages=ASK, n=2))]

        got = asyncio.run(chunks())
        ends = [c for c in got if c.finish_reason]
        assert (
            [c.index for c in ends] == [0, 1]
            and ends[0].prompt_tokens == 7
            and ends[0].completion_tokens == 4
        )
        assert "".join(c.text for c in got if c.index == 1) == "v0001 says: hello there"
        with pytest.raises(NotFound, match="v0009"):
            b.chat("v0009", ChatRequest(messages=ASK))
        b.unload_adapter("v0001")
        assert b.list() == ["base"]
        with pytest.raises(NotFound, match="cannot be found"):
            b.unload_adapter("v0001")
        # what reached vLLM is plain OpenAI: sampling fields passed through, model routed by name
        sent = app.state.requests[0]
        assert sent["model"] == "v0001" and sent["messages"] == ASK and sent["temperature"] == 1.0


def test_openai_routes_over_vllm_follow_the_alias(db: Database, settings: Settings, tmp_path: Path) -> None:
    fake = fake_vllm_app()
    with db.session() as s:
        (tmp_path / "v0001").mkdir()
        (tmp_path / "v0001" / "adapter_config.json").write_text("{}")  # vLLM (faked) reads it, not learnloop
        s.add(version_row("v0001", BASE_NAME, tmp_path / "v0001"))
    with live_server(fake) as vllm_url:
        runtime = ServingRuntime(
            VllmBackend(vllm_url), db, poll_seconds=0.1, capture=ServedCapture(settings, db)
        )
        with live_server(create_app(settings, db, watch_inbox=False, serving=runtime)) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
            r = client.chat.completions.create(model="learnloop", messages=ASK)
            assert r.choices[0].message.content == f"{BASE_NAME} says: hello there" and r.model == "base"
            move(db, None, "learnloop", "set", "v0001", actor="test")
            # Until the runtime applied the move (the adapter is loaded on the vLLM side first).
            deadline = time.monotonic() + 60
            while getattr(runtime.aliases.get("learnloop"), "version_id", None) != "v0001":
                assert time.monotonic() < deadline, "the server did not follow the alias"
                time.sleep(0.05)
            assert "v0001" in fake.state.loras
            stream = client.chat.completions.create(model="learnloop", messages=ASK, stream=True)
            chunks = list(stream)
            assert (
                "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                == "v0001 says: hello there"
            )
            assert chunks[0].model == "v0001"
            # A streamed answer is captured once its stream has ended, which the client can see first.
            deadline = time.monotonic() + 60
            while True:
                assert runtime.capture.flush(10)
                with db.read_session() as s:
                    row = s.get(Trajectory, chunks[0].id)
                if row is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert row is not None, "the streamed answer was never captured"
            assert row.model == "v0001" and row.source.value == "served"
