"""Upstreams for the gateway tests: the demo's teacher as a real HTTP server, with faults switched on.

``teacher_server`` runs ``learnloop.demo.teacher`` under uvicorn; ``faults`` (a dict on the app) makes
its chat route answer 429 with Retry-After, 500, a 400 that echoes the caller's Authorization header,
or hold the answer until the test releases it (``hold``), or stream one piece and hold the rest
(``hold_stream``), or keep a stream busy with comments until released (``trickle``), or stream a tool
call in pieces, holding after each until the test sets its gate (``tool_stream``). ``gateway`` is a
learnloop app (real routes, runtime, capture and database) in front of it, behind uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api_support import live_server
from learnloop.config import Settings
from learnloop.demo.teacher import MODEL, create_teacher_app
from learnloop.store.db import Database

KEY_ENV = "GATEWAY_TEST_TEACHER_KEY"
KEY = "sk-test-teacher-0123456789abcdef"


@dataclass
class Upstream:
    url: str
    app: FastAPI
    faults: dict[str, Any]
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def requests(self) -> list[dict[str, Any]]:
        return list(self.app.state.requests)


def _with_faults(app: FastAPI, faults: dict[str, Any], release: threading.Event) -> None:
    async def wait_release(gate: threading.Event = release) -> None:
        for _ in range(6000):  # at most 60 s, so a broken test ends
            if gate.is_set():
                return
            await asyncio.sleep(0.01)

    @app.middleware("http")
    async def fault(request: Request, call_next: Any) -> Any:
        kind = faults.get("kind")
        if kind is None or request.url.path != "/v1/chat/completions":
            return await call_next(request)
        if kind == "429":
            return JSONResponse(
                {
                    "error": {
                        "message": "Rate limit reached for requests",
                        "type": "requests",
                        "param": None,
                        "code": "rate_limit_exceeded",
                    }
                },
                status_code=429,
                headers={"Retry-After": "7"},
            )
        if kind == "500":
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)
        if kind == "400":
            return JSONResponse(
                {
                    "error": {
                        "message": "Invalid value for 'temperature'.",
                        "type": "invalid_request_error",
                        "param": "temperature",
                        "code": "invalid_value",
                    }
                },
                status_code=400,
            )
        if kind == "echo_key":  # a provider that quotes the key it was given back in its error
            return JSONResponse(
                {"error": {"message": f"key {request.headers.get('authorization')} is not allowed here"}},
                status_code=400,
            )
        if kind == "hold":
            faults["held"] = faults.get("held", 0) + 1
            await wait_release()
            return await call_next(request)
        if kind == "trickle":  # a long answer: comments keep the connection busy until released
            faults["held"] = faults.get("held", 0) + 1

            async def trickle() -> Any:
                for _ in range(6000):
                    if release.is_set():
                        break
                    yield b": still thinking\n\n"
                    await asyncio.sleep(0.01)
                yield (
                    b"data: "
                    + json.dumps(
                        {
                            "id": "x",
                            "object": "chat.completion.chunk",
                            "model": MODEL,
                            "choices": [{"index": 0, "delta": {"content": "done"}, "finish_reason": "stop"}],
                        }
                    ).encode()
                    + b"\n\n"
                )
                yield b"data: [DONE]\n\n"

            return StreamingResponse(trickle(), media_type="text/event-stream")
        if kind == "hold_stream":

            async def events() -> Any:
                def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
                    data = {
                        "id": "x",
                        "object": "chat.completion.chunk",
                        "model": MODEL,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
                        if delta or finish
                        else [],
                        **extra,
                    }
                    return b"data: " + json.dumps(data).encode() + b"\n\n"

                yield event({"role": "assistant", "content": ""})
                yield event({"content": "first piece;"})
                await wait_release()
                faults["released_after_first"] = release.is_set()
                yield event({"content": " second piece"})
                yield event({}, "stop")
                yield event({}, usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        if kind == "tool_stream":  # one tool call in TOOL_PIECES, held on faults["gates"][k] after piece k

            async def tool_events() -> Any:
                gates: list[threading.Event] = faults["gates"]

                def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
                    data = {"id": "x", "object": "chat.completion.chunk", "model": MODEL, "choices": choices}
                    return b"data: " + json.dumps({**data, **extra}).encode() + b"\n\n"

                yield event(
                    [{"index": 0, "delta": {"role": "assistant", "content": None}, "finish_reason": None}]
                )
                for k, piece in enumerate(TOOL_PIECES):
                    yield event([{"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}])
                    await wait_release(gates[k])
                faults["final_sent"] = True
                yield event([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])
                yield event([], usage={"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15})
                yield b"data: [DONE]\n\n"

            return StreamingResponse(tool_events(), media_type="text/event-stream")
        raise AssertionError(f"unknown fault {kind}")


# A tool call as a provider streams it: id and name first, then the arguments in pieces.
TOOL_PIECES: list[dict[str, Any]] = [
    {"index": 0, "id": "call_7", "type": "function", "function": {"name": "place_order", "arguments": ""}},
    {"index": 0, "function": {"arguments": '{"item": "tea", '}},
    {"index": 0, "function": {"arguments": '"qty": 2}'}},
]


@contextlib.contextmanager
def teacher_server(*, api_key: str | None = KEY, **options: Any) -> Iterator[Upstream]:
    app = create_teacher_app(api_key=api_key, **options)
    faults: dict[str, Any] = {}
    release = threading.Event()
    _with_faults(app, faults, release)
    with live_server(app) as url:
        up = Upstream(url, app, faults, release)
        try:
            yield up
        finally:
            release.set()  # a held request ends, so the server can stop


def upstream_entry(url: str, **options: Any) -> dict[str, Any]:
    return {
        "name": "teacher",
        "base_url": f"{url}/v1",
        "model": MODEL,
        "api_key_env": KEY_ENV,
        "price_per_1k_tokens": {"input": 2.5, "output": 10.0},
        **options,
    }


def gateway_settings(settings: Settings, url: str, **sections: Any) -> Settings:
    """``settings`` with the teacher as ``[[upstreams]]`` ``teacher`` (extra fields in ``upstream``)."""
    upstream = sections.pop("upstream", {})
    data = settings.model_dump()
    data["upstreams"] = [upstream_entry(url, **upstream)]
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return Settings(**data)


@contextlib.contextmanager
def gateway(settings: Settings, db: Database, backend: Any = None) -> Iterator[tuple[str, Any]]:
    """learnloop's app (real routes, runtime with the settings' upstreams, capture) on uvicorn."""
    from learnloop.api import create_app
    from learnloop.serving.runtime import ServedCapture, ServingRuntime
    from learnloop.serving.upstream import build_upstreams

    runtime = ServingRuntime(
        backend or StudentBackend(),
        db,
        poll_seconds=0.05,
        capture=ServedCapture(settings, db) if settings.serving.capture else None,
        upstreams=build_upstreams(settings),
        own_price=settings.serving.price_per_1k_tokens,
        traffic_flush_seconds=0.2,
    )
    with live_server(create_app(settings, db, watch_inbox=False, serving=runtime)) as url:
        yield url, runtime


def wait_for(predicate: Any, what: str, timeout: float = 60.0) -> None:
    """Poll ``predicate`` until true (generous deadline: a busy machine must not fail a test)."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def adapter_folder(tmp: Path, name: str) -> Path:
    """A folder of adapter files the registry can hash (the scripted backend never reads them)."""
    folder = tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_model.safetensors").write_bytes(name.encode() * 8)
    (folder / "adapter_config.json").write_text("{}")
    return folder


class StudentBackend:
    """A local backend standing in for a trained student: the demo task's answer when ``right``,
    else chatter (the verifier scores it 0). Loads any adapter name (the files are not read)."""

    def __init__(self, right: bool = True) -> None:
        self.right = right
        self.loaded: set[str] = set()
        self.requests: list[tuple[str, Any]] = []

    def load_adapter(self, name: str, path: Path) -> None:
        self.loaded.add(name)

    def unload_adapter(self, name: str) -> None:
        self.loaded.discard(name)

    def list(self) -> list[str]:
        return ["base", *sorted(self.loaded)]

    def _text(self, request: Any) -> str:
        from learnloop.demo.task import expected_from_message

        users = [m for m in request.messages if m.get("role") == "user"]
        order = expected_from_message(users[-1]["content"]) if users else None
        return json.dumps(order) if self.right and order else "Sure! Here is your order."

    def chat(self, model: str, request: Any) -> list[Any]:
        from learnloop.serving.backend import ChatResult

        self.requests.append((model, request))
        text = self._text(request)
        return [ChatResult(text, "stop", 20, max(1, len(text) // 4))]

    def stream(self, model: str, request: Any) -> Iterator[str]:
        yield self._text(request)

    async def astream(self, model: str, request: Any) -> Any:
        from learnloop.serving.backend import Chunk

        self.requests.append((model, request))
        text = self._text(request)
        for i in range(0, len(text), 8):
            yield Chunk(text=text[i : i + 8])
        yield Chunk(finish_reason="stop", prompt_tokens=20, completion_tokens=max(1, len(text) // 4))

    async def achat(self, model: str, request: Any) -> list[Any]:
        return self.chat(model, request)
