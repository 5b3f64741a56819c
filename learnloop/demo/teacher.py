"""The demo's teacher: a rule-based "big model" behind a small, real OpenAI-compatible HTTP server.

It stands where a hosted provider would (learnloop's ``[[upstreams]]``): ``POST /v1/chat/completions``
plain and streamed (server-sent events, usage when ``stream_options.include_usage``), ``n``, ``stop``,
``tools`` (it calls a tool named ``place_order`` when offered one), ``logprobs`` (its confidence, the
same for every token of an answer), Bearer-key auth, and ``GET /v1/models``. Its answers are the
demo task's expected JSON; its latency and prices are a hosted model's, simulated (``--first-token-ms``,
``--token-ms``) so the demo's latency and cost figures have something to compare.

Run it alone::

    python -m learnloop.demo.teacher --port 8390 [--api-key-env TEACHER_KEY]

Every request body it received is kept in ``app.state.requests`` (the last 1,000), for tests that
check what a proxy passed on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from learnloop.demo.task import expected_from_message

MODEL = "rules-teacher"
TOOL = "place_order"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def tokens(text: str) -> list[str]:
    """The answer cut into ~4-character pieces (a rough stand-in for a tokenizer, as prices assume)."""
    return [text[i : i + 4] for i in range(0, len(text), 4)] or [""]


def count_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def confidence_of(message: str) -> float:
    """How sure the teacher is of one answer: fixed per message, spread over 0.5 .. 1.0."""
    h = int(hashlib.sha256(message.encode()).hexdigest()[:8], 16) / 2**32
    return round(0.5 + 0.5 * h, 3)


def answer_for(body: dict[str, Any]) -> tuple[str, dict[str, Any] | None, float]:
    """(text, tool call or None, confidence) for a request."""
    users = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    message = _text(users[-1].get("content")) if users else ""
    order = expected_from_message(message)
    conf = confidence_of(message)
    if order is None:
        return "I can only turn order messages into JSON.", None, 0.5
    offered = {(t.get("function") or {}).get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
    if TOOL in offered and body.get("tool_choice") != "none":
        call = {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": TOOL, "arguments": json.dumps(order)},
        }
        return "", call, conf
    return json.dumps(order), None, conf


def _cut(text: str, stop: Any) -> str:
    """``text`` up to the first stop string it holds."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text


def create_teacher_app(
    *, api_key: str | None = None, first_token_ms: float = 0.0, token_ms: float = 0.0
) -> FastAPI:
    app = FastAPI(title="learnloop demo teacher")
    app.state.requests = deque(maxlen=1000)
    app.state.served = 0

    def unauthorized(request: Request) -> JSONResponse | None:
        if api_key is None:
            return None
        if request.headers.get("authorization") == f"Bearer {api_key}":
            return None
        return JSONResponse(
            {
                "error": {
                    "message": "Incorrect API key provided.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
            status_code=401,
        )

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        denied = unauthorized(request)
        if denied is not None:
            return denied
        return JSONResponse(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "demo"}]}
        )

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        denied = unauthorized(request)
        if denied is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "The body is not valid JSON.")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400, "messages must be a non-empty array.", param="messages")
        app.state.requests.append({"body": body, "authorization": request.headers.get("authorization")})
        app.state.served += 1
        n = int(body.get("n") or 1)
        text, call, conf = answer_for(body)
        text = _cut(text, body.get("stop"))
        finish = "tool_calls" if call else "stop"
        prompt_tokens = sum(count_tokens(_text(m.get("content"))) for m in body["messages"])
        pieces = tokens(text) if text else []
        completion_tokens = count_tokens(call["function"]["arguments"]) if call else len(pieces)
        lp = math.log(conf)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens * n,
            "total_tokens": prompt_tokens + completion_tokens * n,
        }
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:20]}", int(time.time())
        want_logprobs = bool(body.get("logprobs"))

        def logprobs(piece_list: list[str]) -> dict[str, Any] | None:
            if not want_logprobs:
                return None
            return {
                "content": [
                    {"token": p, "logprob": lp, "bytes": None, "top_logprobs": []} for p in piece_list
                ]
            }

        if not body.get("stream"):
            await asyncio.sleep((first_token_ms + token_ms * completion_tokens) / 1000)
            message: dict[str, Any] = {"role": "assistant", "content": text if not call else None}
            if call:
                message["tool_calls"] = [call]
            return JSONResponse(
                {
                    "id": rid,
                    "object": "chat.completion",
                    "created": created,
                    "model": MODEL,
                    "choices": [
                        {
                            "index": i,
                            "message": message,
                            "finish_reason": finish,
                            "logprobs": logprobs(pieces),
                        }
                        for i in range(n)
                    ],
                    "usage": usage,
                }
            )

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            data = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": MODEL,
                "choices": choices,
                **extra,
            }
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        async def events() -> AsyncIterator[bytes]:
            await asyncio.sleep(first_token_ms / 1000)
            for i in range(n):
                yield event(
                    [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
                )
            if call:
                for i in range(n):
                    delta = {"tool_calls": [{"index": 0, **call}]}
                    yield event([{"index": i, "delta": delta, "finish_reason": None}])
            for piece in pieces:
                if token_ms:
                    await asyncio.sleep(token_ms / 1000)
                for i in range(n):
                    yield event(
                        [
                            {
                                "index": i,
                                "delta": {"content": piece},
                                "finish_reason": None,
                                "logprobs": logprobs([piece]),
                            }
                        ]
                    )
            for i in range(n):
                yield event([{"index": i, "delta": {}, "finish_reason": finish}])
            if include_usage:
                yield event([], usage=usage)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def _error(status: int, message: str, *, param: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}},
        status_code=status,
    )


def main(argv: list[str] | None = None) -> None:
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(
        description="The learnloop demo's rule-based teacher (OpenAI-compatible)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8390)
    parser.add_argument(
        "--api-key-env", default=None, help="Require this environment variable's value as key."
    )
    parser.add_argument(
        "--first-token-ms", type=float, default=0.0, help="Simulated time to the first token."
    )
    parser.add_argument("--token-ms", type=float, default=0.0, help="Simulated time per further token.")
    args = parser.parse_args(argv)
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not key:
        parser.error(f"{args.api_key_env} is not set")
    app = create_teacher_app(api_key=key, first_token_ms=args.first_token_ms, token_ms=args.token_ms)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
