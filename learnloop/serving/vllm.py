"""VllmBackend: a vLLM server started with ``--enable-lora`` does the decoding; adapters are loaded
into it at run time by name, and requests are routed by the OpenAI ``model`` field.

The server needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` in its environment for the
``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` endpoints (see the README for the command).
Adapter names are version ids, which never change meaning: vLLM keys its caches by adapter name,
so reusing a name for other weights would serve stale results.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from learnloop.errors import Conflict, NotFound, Overloaded, StoreUnavailable, ValidationFailed
from learnloop.serving.backend import BASE, ChatRequest, ChatResult, Chunk


class VllmBackend:
    """Talks to ``url`` (e.g. http://127.0.0.1:8000). ``base_name`` is the name vLLM serves the base under
    (its ``--served-model-name``, default the model path); unset: the first model the server lists."""

    def __init__(
        self, url: str, *, base_name: str | None = None, api_key: str | None = None, timeout: float = 600.0
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._headers, self._timeout = headers, timeout
        self._adapters: set[str] = set()
        self.base_name = base_name or self._first_model()

    def _first_model(self) -> str:
        data = self._get_models()
        roots = [m["id"] for m in data if not m.get("parent")]
        if not roots:
            raise StoreUnavailable(f"The vLLM server at {self.url} lists no base model.")
        return roots[0]

    def _get_models(self) -> list[dict[str, Any]]:
        try:
            resp = self._http.get("/v1/models")
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"The vLLM server at {self.url} cannot be reached: {exc}") from None
        _raise_for(resp)
        return resp.json().get("data", [])

    # -- adapters ------------------------------------------------------------------------------

    def load_adapter(self, name: str, path: Path | str) -> None:
        if name in self._adapters:
            return
        resp = self._http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
        if resp.status_code == 400 and "already" in resp.text.lower():
            self._adapters.add(name)  # loaded by an earlier process under the same immutable name
            return
        _raise_for(resp)
        self._adapters.add(name)

    def unload_adapter(self, name: str) -> None:
        resp = self._http.post("/v1/unload_lora_adapter", json={"lora_name": name})
        _raise_for(resp)
        self._adapters.discard(name)

    def list(self) -> list[str]:
        names = [m["id"] for m in self._get_models() if m.get("parent")]
        self._adapters = set(names)
        return [BASE, *names]

    def close(self) -> None:
        self._http.close()

    # -- requests ------------------------------------------------------------------------------

    def _body(self, model: str, request: ChatRequest, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.base_name if model == BASE else model,
            "messages": [_openai_message(m) for m in request.messages],
            "temperature": request.temperature,
            "top_p": request.top_p,
            "n": request.n,
            "stream": stream,
        }
        for key in ("tools", "max_tokens", "seed"):
            if getattr(request, key) is not None:
                body[key] = getattr(request, key)
        if request.stop:
            body["stop"] = request.stop
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def chat(self, model: str, request: ChatRequest) -> list[ChatResult]:
        resp = self._http.post("/v1/chat/completions", json=self._body(model, request, False))
        _raise_for(resp)
        return _results(resp.json())

    def stream(self, model: str, request: ChatRequest) -> Iterator[str]:
        single = ChatRequest(**{**request.__dict__, "n": 1})
        with self._http.stream("POST", "/v1/chat/completions", json=self._body(model, single, True)) as resp:
            if resp.status_code >= 400:
                resp.read()
                _raise_for(resp)
            for data in _events(resp.iter_lines()):
                for choice in data.get("choices", []):
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text

    async def astream(self, model: str, request: ChatRequest) -> AsyncIterator[Chunk]:
        async with httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=self._timeout) as http:
            async with http.stream(
                "POST", "/v1/chat/completions", json=self._body(model, request, True)
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _raise_for(resp)
                finished: list[Chunk] = []
                tools: dict[int, dict[int, dict[str, Any]]] = {}
                async for line in resp.aiter_lines():
                    for data in _events([line]):
                        for choice in data.get("choices", []):
                            i = choice.get("index", 0)
                            delta = choice.get("delta") or {}
                            for tc in delta.get("tool_calls") or []:
                                slot = tools.setdefault(i, {}).setdefault(
                                    tc.get("index", 0),
                                    {
                                        "id": tc.get("id"),
                                        "type": "function",
                                        "function": {"name": "", "arguments": ""},
                                    },
                                )
                                fn = tc.get("function") or {}
                                slot["function"]["name"] += fn.get("name") or ""
                                slot["function"]["arguments"] += fn.get("arguments") or ""
                            if delta.get("content"):
                                yield Chunk(index=i, text=delta["content"])
                            if choice.get("finish_reason"):
                                calls = [tools[i][k] for k in sorted(tools.get(i, {}))] or None
                                finished.append(
                                    Chunk(index=i, finish_reason=choice["finish_reason"], tool_calls=calls)
                                )
                        usage = data.get("usage")
                        if usage:  # the last event: token counts for every choice
                            for c in finished:
                                c.prompt_tokens = usage.get("prompt_tokens", 0)
                                c.completion_tokens = usage.get("completion_tokens", 0) // max(
                                    1, len(finished)
                                )
                                yield c
                            finished = []
                for c in finished:  # a server that sent no usage event
                    yield c

    async def achat(self, model: str, request: ChatRequest) -> list[ChatResult]:
        async with httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=self._timeout) as http:
            resp = await http.post("/v1/chat/completions", json=self._body(model, request, False))
        _raise_for(resp)
        return _results(resp.json())


def _openai_message(m: dict[str, Any]) -> dict[str, Any]:
    # normalize_messages keeps tool-call arguments as mappings for chat templates; the wire wants JSON text
    if not m.get("tool_calls"):
        return m
    calls = [
        {
            **c,
            "function": {
                **c["function"],
                "arguments": c["function"]["arguments"]
                if isinstance(c["function"]["arguments"], str)
                else orjson.dumps(c["function"]["arguments"]).decode(),
            },
        }
        for c in m["tool_calls"]
    ]
    return {**m, "tool_calls": calls}


def _events(lines: Any) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload and payload != "[DONE]":
            yield orjson.loads(payload)


def _results(data: dict[str, Any]) -> list[ChatResult]:
    usage = data.get("usage") or {}
    out = []
    for choice in sorted(data.get("choices", []), key=lambda c: c.get("index", 0)):
        msg = choice.get("message") or {}
        out.append(
            ChatResult(
                text=msg.get("content") or "",
                finish_reason=choice.get("finish_reason") or "stop",
                prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", 0) // max(1, len(data.get("choices", []))),
                tool_calls=msg.get("tool_calls") or None,
            )
        )
    return out


def _raise_for(resp: httpx.Response) -> None:
    """vLLM's answers as our domain errors, with its own message."""
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
        err = body.get("error", body)
        message = err.get("message") if isinstance(err, dict) else str(err)
    except ValueError:
        message = resp.text
    message = f"vLLM: {message}"
    if resp.status_code == 404:
        raise NotFound(message)
    if resp.status_code == 429 or resp.status_code == 503:
        raise Overloaded(message, retry_after=float(resp.headers.get("Retry-After", 1)))
    if resp.status_code in (400, 422):
        raise ValidationFailed(message)
    if resp.status_code == 409:
        raise Conflict(message)
    raise StoreUnavailable(f"{message} (HTTP {resp.status_code})")
