"""Upstreams: an OpenAI-compatible provider (OpenAI, vLLM, Ollama, llama.cpp, another learnloop) as
one more serving backend.

An alias target is a version id, ``base`` or ``upstream:<name>``; a request routed to an upstream
target is answered by that ``[[upstreams]]`` entry's ``UpstreamBackend`` through the same
``ServingBackend`` interface the local model uses, so routing, A/B splits, the version header and the
capture of served traffic treat it like any version (its answers are stored as ``source = teacher``).

What the backend adds to a plain HTTP client:

* the request goes on as the client sent it (tools, tool_choice, n, stop, seed, response_format,
  logprobs and any other field), with the upstream's own ``model`` and API key; streamed chunks are
  handed on as they arrive, and usage is always asked for so each answer's tokens can be priced;
* at most ``max_concurrency`` requests are in flight to it; a request that waits longer than
  ``timeout`` for a slot gets 429;
* its errors become ``UpstreamFailed`` carrying the status a client should see and the upstream's
  OpenAI-shaped error object: its 4xx as they are, 429/503 with its Retry-After, other 5xx as 502,
  a timeout as 504, an unreachable host as 502. Its 401/403/404 (a wrong key or model name in
  learnloop.toml, not the client's fault) become 502 saying which setting to check;
* the API key is read from the environment variable ``api_key_env`` names, sent only in the
  Authorization header, and replaced by ``***`` in any text the backend hands on (an upstream that
  echoes a key in its error message does not leak it to clients or logs).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import os
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from learnloop.errors import ConfigError, Conflict, Overloaded, UpstreamFailed
from learnloop.serving.backend import ChatRequest, ChatResult, Chunk
from learnloop.store.aliases import is_upstream, target_of, upstream_name

MASK = "***"
__all__ = ["UpstreamBackend", "build_upstreams", "confidence", "is_upstream", "target_of", "upstream_name"]


def confidence(logprobs: list[dict[str, Any]] | None) -> float | None:
    """exp(mean token logprob) of an answer: the probability the model gave its tokens, on average
    in log space (None without logprobs)."""
    values = [lp.get("logprob") for lp in logprobs or () if isinstance(lp, dict)]
    values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return None
    return round(math.exp(sum(values) / len(values)), 4)


class UpstreamBackend:
    """Answers every model name it is asked for from one upstream endpoint (``settings.model``)."""

    def __init__(self, settings: Any, *, api_key: str | None = None) -> None:
        self.settings = settings
        self.name: str = settings.name
        self.target = target_of(settings.name)
        self.model: str = settings.model
        self.url: str = settings.base_url.rstrip("/")
        self.timeout = float(settings.timeout)
        self.max_concurrency = int(settings.max_concurrency)
        self._key = api_key or None
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeouts = httpx.Timeout(self.timeout)
        # Clients and slots belong to the event loop they were made in (uvicorn has one; tests
        # and benchmarks may run several, one after another).
        self._per_loop: weakref.WeakKeyDictionary[Any, tuple[httpx.AsyncClient, asyncio.Semaphore]] = (
            weakref.WeakKeyDictionary()
        )
        self._sync: httpx.Client | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> UpstreamBackend:
        """The backend for one ``[[upstreams]]`` entry, its key read from ``api_key_env`` (ConfigError
        naming the variable, never its value, when it is unset)."""
        key = None
        if settings.api_key_env:
            key = os.environ.get(settings.api_key_env)
            if not key:
                raise ConfigError(
                    f"upstream {settings.name!r}: the environment variable {settings.api_key_env} "
                    "(its api_key_env) is not set; export the API key in it, or remove api_key_env "
                    "for an endpoint that needs none."
                )
        return cls(settings, api_key=key)

    # -- the ServingBackend interface ----------------------------------------------------------

    def list(self) -> list[str]:
        return []  # no adapters: the upstream answers under its target name only

    def load_adapter(self, name: str, path: Path) -> None:
        raise Conflict(f"upstream {self.name!r} serves its own model; adapters load into the local backend.")

    def unload_adapter(self, name: str) -> None:
        return None

    def scrub(self, text: str) -> str:
        """``text`` with the API key replaced by ``***``."""
        if self._key and self._key in text:
            return text.replace(self._key, MASK)
        return text

    def body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The upstream request: the client's own fields (``request.extra``) over the ones
        ``ChatRequest`` carries, with this upstream's model."""
        body: dict[str, Any] = {"model": self.model, "messages": [_wire_message(m) for m in request.messages]}
        if request.n != 1:
            body["n"] = request.n
        if request.tools is not None:
            body["tools"] = request.tools
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature != 1.0:
            body["temperature"] = request.temperature
        if request.top_p != 1.0:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = request.stop
        if request.seed is not None:
            body["seed"] = request.seed
        body.update(request.extra)
        if "max_completion_tokens" in body:
            body.pop("max_tokens", None)  # sent as the client named it (newer OpenAI models want this one)
        body["model"] = self.model
        body["stream"] = stream
        if stream:
            body["stream_options"] = {"include_usage": True}  # every answer's tokens, for cost figures
        else:
            body.pop("stream_options", None)
        if self.settings.confidence_from_logprobs and not body.get("logprobs"):
            body["logprobs"] = True
        return body

    async def astream(self, model: str, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Chunks as the upstream sends them; each choice's end (finish reason, tool calls, tokens)
        once its usage is known."""
        http, slots = self._loop_client()
        await self._acquire(slots)
        try:
            try:
                async with http.stream(
                    "POST", "/chat/completions", json=self.body(request, stream=True)
                ) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        self._raise_for(resp)
                    finished: list[Chunk] = []
                    tools: dict[int, dict[int, dict[str, Any]]] = {}
                    async for line in resp.aiter_lines():
                        data = _event(line)
                        if data is None:
                            continue
                        if isinstance(data.get("error"), dict):  # an error event mid-stream
                            raise self._failed(502, data["error"], None)
                        for choice in data.get("choices") or ():
                            i = choice.get("index", 0)
                            delta = choice.get("delta") or {}
                            for tc in delta.get("tool_calls") or ():
                                _add_tool_delta(tools.setdefault(i, {}), tc)
                            text = delta.get("content")
                            lp = (choice.get("logprobs") or {}).get("content")
                            if text or lp:
                                yield Chunk(index=i, text=text or "", logprobs=lp or None)
                            if choice.get("finish_reason"):
                                calls = [tools[i][k] for k in sorted(tools.get(i, {}))] or None
                                finished.append(
                                    Chunk(index=i, finish_reason=choice["finish_reason"], tool_calls=calls)
                                )
                        usage = data.get("usage")
                        if usage and finished:  # the last event: every choice's tokens
                            for c in _with_usage(finished, usage):
                                yield c
                            finished = []
                    for c in finished:  # an upstream that sent no usage
                        yield c
            except httpx.TimeoutException:
                raise self._timeout_error() from None
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from None
        finally:
            slots.release()

    async def achat(self, model: str, request: ChatRequest) -> list[ChatResult]:
        http, slots = self._loop_client()
        await self._acquire(slots)
        try:
            resp = await http.post("/chat/completions", json=self.body(request, stream=False))
        except httpx.TimeoutException:
            raise self._timeout_error() from None
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        finally:
            slots.release()
        self._raise_for(resp)
        return _results(resp.json())

    def chat(self, model: str, request: ChatRequest) -> list[ChatResult]:
        """Blocking (evaluation asks the teacher this way)."""
        try:
            resp = self._sync_client().post("/chat/completions", json=self.body(request, stream=False))
        except httpx.TimeoutException:
            raise self._timeout_error() from None
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        self._raise_for(resp)
        return _results(resp.json())

    def stream(self, model: str, request: ChatRequest) -> Iterator[str]:
        single = ChatRequest(**{**request.__dict__, "n": 1})
        try:
            with self._sync_client().stream(
                "POST", "/chat/completions", json=self.body(single, stream=True)
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._raise_for(resp)
                for line in resp.iter_lines():
                    data = _event(line)
                    for choice in (data or {}).get("choices") or ():
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            yield text
        except httpx.TimeoutException:
            raise self._timeout_error() from None
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def aclose(self) -> None:
        """Close this event loop's client (the server's shutdown)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        pair = self._per_loop.pop(loop, None)
        if pair is not None:
            await pair[0].aclose()

    # -- internals -------------------------------------------------------------------------------

    def _loop_client(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        pair = self._per_loop.get(loop)
        if pair is None:
            limits = httpx.Limits(
                max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
            )
            http = httpx.AsyncClient(
                base_url=self.url, headers=self._headers, timeout=self._timeouts, limits=limits
            )
            pair = (http, asyncio.Semaphore(self.max_concurrency))
            self._per_loop[loop] = pair
        return pair

    def _sync_client(self) -> httpx.Client:
        if self._sync is None:
            self._sync = httpx.Client(base_url=self.url, headers=self._headers, timeout=self._timeouts)
        return self._sync

    async def _acquire(self, slots: asyncio.Semaphore) -> None:
        try:
            await asyncio.wait_for(slots.acquire(), timeout=self.timeout)
        except TimeoutError:
            raise Overloaded(
                f"upstream {self.name}: {self.max_concurrency} requests in flight (its max_concurrency) "
                f"for {self.timeout:g} s; retry shortly.",
                retry_after=1.0,
            ) from None

    def _failed(self, status: int, error: dict[str, Any], retry_after: float | None) -> UpstreamFailed:
        message = self.scrub(str(error.get("message") or "no message"))
        shaped = {
            "message": f"upstream {self.name}: {message}",
            "type": error.get("type") or "upstream_error",
            "param": error.get("param"),
            "code": error.get("code"),
        }
        return UpstreamFailed(shaped["message"], status=status, error=shaped, retry_after=retry_after)

    def _timeout_error(self) -> UpstreamFailed:
        return self._failed(
            504,
            {
                "message": f"no answer within {self.timeout:g} s (its timeout)",
                "type": "timeout",
                "code": "upstream_timeout",
            },
            None,
        )

    def _unreachable(self, exc: Exception) -> UpstreamFailed:
        return self._failed(
            502,
            {
                "message": f"{self.url} cannot be reached ({type(exc).__name__}: {self.scrub(str(exc))})",
                "type": "server_error",
                "code": "upstream_unreachable",
            },
            None,
        )

    def _raise_for(self, resp: httpx.Response) -> None:
        if resp.status_code < 400:
            return
        try:
            data = resp.json()
            error = data.get("error") if isinstance(data, dict) else None
            if not isinstance(error, dict):
                error = {"message": error if isinstance(error, str) else resp.text[:1000]}
        except ValueError:
            error = {"message": resp.text[:1000] or resp.reason_phrase}
        status = resp.status_code
        retry = _retry_after(resp.headers.get("Retry-After"))
        if status in (401, 403):
            key = f"the key in {self.settings.api_key_env}" if self.settings.api_key_env else "no API key"
            error = {
                **error,
                "message": f"refused {key} (HTTP {status}: {error.get('message')}); check [[upstreams]] "
                f"{self.name!r} api_key_env",
            }
            status = 502
        elif status == 404:
            error = {
                **error,
                "message": f"HTTP 404 for model {self.model!r} at {self.url} ({error.get('message')}); "
                f"check [[upstreams]] {self.name!r} base_url and model",
            }
            status = 502
        elif status == 429 or status == 503:
            retry = 1.0 if retry is None else retry
        elif status >= 500:
            status = 502
        raise self._failed(status, error, retry)


def _wire_message(m: dict[str, Any]) -> dict[str, Any]:
    # A message normalised for a chat template holds tool-call arguments as mappings; the wire wants text.
    calls = m.get("tool_calls") if isinstance(m, dict) else None
    if not calls or all(isinstance((c.get("function") or {}).get("arguments"), str) for c in calls):
        return m
    fixed = []
    for c in calls:
        fn = dict(c.get("function") or {})
        if not isinstance(fn.get("arguments"), str):
            fn["arguments"] = orjson.dumps(fn.get("arguments") or {}).decode()
        fixed.append({**c, "function": fn})
    return {**m, "tool_calls": fixed}


def _event(line: str) -> dict[str, Any] | None:
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if not payload or payload == "[DONE]":
        return None
    data = orjson.loads(payload)
    return data if isinstance(data, dict) else None


def _add_tool_delta(slots: dict[int, dict[str, Any]], tc: dict[str, Any]) -> None:
    slot = slots.setdefault(
        tc.get("index", 0),
        {"id": tc.get("id"), "type": "function", "function": {"name": "", "arguments": ""}},
    )
    if tc.get("id") and not slot["id"]:
        slot["id"] = tc["id"]
    fn = tc.get("function") or {}
    slot["function"]["name"] += fn.get("name") or ""
    slot["function"]["arguments"] += fn.get("arguments") or ""


def _with_usage(finished: list[Chunk], usage: dict[str, Any]) -> list[Chunk]:
    """Each finished choice with the prompt tokens and its share of the completion tokens (the
    remainder on the first, so the sum is the upstream's count)."""
    done = int(usage.get("completion_tokens") or 0)
    share, rest = divmod(done, max(1, len(finished)))
    for k, c in enumerate(finished):
        c.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        c.completion_tokens = share + (rest if k == 0 else 0)
    return finished


def _results(data: dict[str, Any]) -> list[ChatResult]:
    usage = data.get("usage") or {}
    choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
    done = int(usage.get("completion_tokens") or 0)
    share, rest = divmod(done, max(1, len(choices)))
    out = []
    for k, choice in enumerate(choices):
        msg = choice.get("message") or {}
        out.append(
            ChatResult(
                text=msg.get("content") or "",
                finish_reason=choice.get("finish_reason") or "stop",
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=share + (rest if k == 0 else 0),
                tool_calls=msg.get("tool_calls") or None,
            )
        )
    return out


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def build_upstreams(settings: Any) -> dict[str, UpstreamBackend]:
    """One backend per ``[[upstreams]]`` entry, keyed by target (``upstream:<name>``)."""
    return {target_of(u.name): UpstreamBackend.from_settings(u) for u in settings.upstreams}
