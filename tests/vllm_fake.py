"""A small stand-in for a vLLM server started with --enable-lora: the endpoints VllmBackend uses.

It answers "<model> says: <last user message>" so a test can see which adapter a request reached.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

BASE_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _error(status: int, message: str) -> JSONResponse:
    kind = {404: "NotFoundError", 400: "BadRequestError"}.get(status, "Error")
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": status}}, status_code=status
    )


def fake_vllm_app() -> FastAPI:
    app = FastAPI()
    loras: dict[str, str] = {}
    app.state.loras = loras
    app.state.requests = []

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [{"id": BASE_NAME, "object": "model", "root": BASE_NAME, "parent": None}]
        data += [{"id": n, "object": "model", "root": p, "parent": BASE_NAME} for n, p in loras.items()]
        return {"object": "list", "data": data}

    @app.post("/v1/load_lora_adapter")
    async def load(body: dict[str, Any]) -> Any:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return _error(400, "Both 'lora_name' and 'lora_path' must be provided.")
        if name in loras:
            return _error(400, f"The lora adapter '{name}' has already been loaded.")
        loras[name] = path
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload(body: dict[str, Any]) -> Any:
        name = body.get("lora_name")
        if name not in loras:
            return _error(404, f"The lora adapter '{name}' cannot be found.")
        del loras[name]
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        app.state.requests.append(body)
        model = body["model"]
        if model != BASE_NAME and model not in loras:
            return _error(404, f"The model `{model}` does not exist.")
        user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        words = f"{model} says: {user}".split(" ")[: body.get("max_tokens") or 1000]
        n = body.get("n", 1)
        usage = {"prompt_tokens": 7, "completion_tokens": len(words) * n, "total_tokens": 7 + len(words) * n}
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": model}
        if not body.get("stream"):
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": " ".join(words)},
                    "finish_reason": "stop",
                }
                for i in range(n)
            ]
            return {**base, "object": "chat.completion", "choices": choices, "usage": usage}

        def events():
            for i in range(n):
                for k, w in enumerate(words):
                    delta = {"content": w if k == 0 else " " + w}
                    yield (
                        "data: "
                        + json.dumps(
                            {
                                **base,
                                "object": "chat.completion.chunk",
                                "choices": [{"index": i, "delta": delta, "finish_reason": None}],
                            }
                        )
                        + "\n\n"
                    )
                yield (
                    "data: "
                    + json.dumps(
                        {
                            **base,
                            "object": "chat.completion.chunk",
                            "choices": [{"index": i, "delta": {}, "finish_reason": "stop"}],
                        }
                    )
                    + "\n\n"
                )
            if (body.get("stream_options") or {}).get("include_usage"):
                yield (
                    "data: "
                    + json.dumps({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
                    + "\n\n"
                )
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
