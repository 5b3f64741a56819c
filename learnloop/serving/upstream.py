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

The server's requests go through aiohttp: streaming a 20-chunk answer through httpx cost 1.25 ms of
CPU per request against aiohttp's 0.40 ms (measured on loopback against the demo's teacher), and
every request the alias serves pays it. Events that arrive in one network read are handed on as one
piece per choice, so a proxy that falls behind catches up in fewer, larger writes. Evaluation's
blocking calls (``chat``, ``stream``) use httpx like the rest of learnloop.
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

import aiohttp
import httpx
import orjson
import yarl

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
        self._endpoint = yarl.URL(f"{self.url}/chat/completions")  # parsed once, not per request
        self.timeout = float(settings.timeout)
        self.max_concurrency = int(settings.max_concurrency)
        self._key = api_key or None
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeouts = httpx.Timeout(self.timeout)
        # Sessions and slots belong to the event loop they were made in (uvicorn has one; tests
        # and benchmarks may run several, one after another).
        self._per_loop: weakref.WeakKeyDictionary[Any, tuple[aiohttp.ClientSession, asyncio.Semaphore]] = (
            weakref.WeakKeyDictionary()
        )
        self._sync: httpx.Client | None = None
        # HTTP(S)_PROXY / NO_PROXY, read once: aiohttp's trust_env looks them up in a worker thread on
        # every request, which cost more than the rest of the request.
        self._proxy = _env_proxy(self.url)

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
        """Chunks as the upstream sends them (text, logprobs and tool-call deltas alike); each
        choice's end (finish reason, the assembled tool calls, tokens) once its usage is known."""
        session, slots = self._loop_session()
        await self._acquire(slots)
        try:
            try:
                async with session.post(
                    self._endpoint,
                    data=orjson.dumps(self.body(request, stream=True)),
                    proxy=self._proxy,
                ) as resp:
                    if resp.status >= 400:
                        self._raise_for(resp.status, resp.headers, await resp.read())
                    finished: list[Chunk] = []
                    tools: dict[int, dict[int, dict[str, Any]]] = {}
                    rest = b""
                    async for data in resp.content.iter_any():
                        lines = (rest + data).split(b"\n")
                        rest = lines.pop()  # an event cut by the network: completed by the next read
                        pieces: list[Chunk] = []
                        for line in lines:
                            event = _event(line)
                            if event is None:
                                continue
                            if isinstance(event.get("error"), dict):  # an error event mid-stream
                                raise self._failed(502, event["error"], None)
                            usage = _read_event(event, pieces, finished, tools)
                            if usage and finished:  # the last event: every choice's tokens
                                pieces += _with_usage(finished, usage)
                                finished = []
                        for c in _merged(pieces):
                            yield c
                    for c in finished:  # an upstream that sent no usage
                        yield c
            except TimeoutError:
                raise self._timeout_error() from None
            except aiohttp.ClientError as exc:
                raise self._unreachable(exc) from None
        finally:
            slots.release()

    async def achat(self, model: str, request: ChatRequest) -> list[ChatResult]:
        session, slots = self._loop_session()
        await self._acquire(slots)
        try:
            async with session.post(
                self._endpoint,
                data=orjson.dumps(self.body(request, stream=False)),
                proxy=self._proxy,
            ) as resp:
                raw = await resp.read()
                self._raise_for(resp.status, resp.headers, raw)
        except TimeoutError:
            raise self._timeout_error() from None
        except aiohttp.ClientError as exc:
            raise self._unreachable(exc) from None
        finally:
            slots.release()
        return _results(orjson.loads(raw))

    def chat(self, model: str, request: ChatRequest) -> list[ChatResult]:
        """Blocking (evaluation asks the teacher this way)."""
        try:
            resp = self._sync_client().post("/chat/completions", json=self.body(request, stream=False))
        except httpx.TimeoutException:
            raise self._timeout_error() from None
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        self._raise_for(resp.status_code, resp.headers, resp.content)
        return _results(resp.json())

    def stream(self, model: str, request: ChatRequest) -> Iterator[str]:
        single = ChatRequest(**{**request.__dict__, "n": 1})
        try:
            with self._sync_client().stream(
                "POST", "/chat/completions", json=self.body(single, stream=True)
            ) as resp:
                if resp.status_code >= 400:
                    self._raise_for(resp.status_code, resp.headers, resp.read())
                for line in resp.iter_lines():
                    data = _event(line.encode())
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
        """Close this event loop's session (the server's shutdown)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        pair = self._per_loop.pop(loop, None)
        if pair is not None:
            await pair[0].close()

    # -- internals -------------------------------------------------------------------------------

    def _loop_session(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        pair = self._per_loop.get(loop)
        if pair is None:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_concurrency),
                # The timeout bounds connecting and each wait for data (a stream: between two chunks).
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout),
                headers={"Content-Type": "application/json", **self._headers},
            )
            pair = (session, asyncio.Semaphore(self.max_concurrency))
            self._per_loop[loop] = pair
        return pair

    def _sync_client(self) -> httpx.Client:
        if self._sync is None:
            self._sync = httpx.Client(base_url=self.url, headers=self._headers, timeout=self._timeouts)
        return self._sync

    async def _acquire(self, slots: asyncio.Semaphore) -> None:
        if not slots.locked():  # a free slot: taken at once (wait_for would start a task for it)
            await slots.acquire()
            return
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

    def _raise_for(self, status: int, headers: Any, raw: bytes) -> None:
        """An error answer (status >= 400) as ``UpstreamFailed`` with the status a client should get."""
        if status < 400:
            return
        text = raw.decode("utf-8", "replace")
        try:
            data = orjson.loads(raw)
            error = data.get("error") if isinstance(data, dict) else None
            if not isinstance(error, dict):
                error = {"message": error if isinstance(error, str) else text[:1000]}
        except orjson.JSONDecodeError:
            error = {"message": text[:1000] or f"HTTP {status}"}
        retry = _retry_after(headers.get("Retry-After"))
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


def _event(line: bytes) -> dict[str, Any] | None:
    """The JSON of one server-sent ``data:`` line (None for comments, blank lines and ``[DONE]``)."""
    if not line.startswith(b"data:"):
        return None
    payload = line[5:].strip()
    if not payload or payload == b"[DONE]":
        return None
    data = orjson.loads(payload)
    return data if isinstance(data, dict) else None


def _read_event(
    event: dict[str, Any],
    pieces: list[Chunk],
    finished: list[Chunk],
    tools: dict[int, dict[int, dict[str, Any]]],
) -> dict[str, Any] | None:
    """Add one event's pieces (text, logprobs, tool-call deltas) to ``pieces`` and its choices' ends to
    ``finished``; its usage, if any. Tool-call deltas go on as they came and are also assembled into
    ``tools``, so the choice's end carries the whole calls for the capture."""
    for choice in event.get("choices") or ():
        i = choice.get("index", 0)
        delta = choice.get("delta") or {}
        calls = delta.get("tool_calls") or None
        if calls:
            slots = tools.setdefault(i, {})
            for tc in calls:
                _add_tool_delta(slots, tc)
        text = delta.get("content")
        lp = (choice.get("logprobs") or {}).get("content")
        if text or lp or calls:
            pieces.append(Chunk(index=i, text=text or "", logprobs=lp or None, tool_deltas=calls))
        if choice.get("finish_reason"):
            calls = [tools[i][k] for k in sorted(tools.get(i, {}))] or None
            finished.append(Chunk(index=i, finish_reason=choice["finish_reason"], tool_calls=calls))
    return event.get("usage")


def _merged(pieces: list[Chunk]) -> list[Chunk]:
    """Text pieces of one read, consecutive ones of a choice joined (ends stay as they are)."""
    out: list[Chunk] = []
    for c in pieces:
        last = out[-1] if out else None
        if (
            last is not None
            and c.finish_reason is None
            and last.finish_reason is None
            and last.index == c.index
        ):
            last.text += c.text
            if c.logprobs:
                last.logprobs = (last.logprobs or []) + c.logprobs
            if c.tool_deltas:
                last.tool_deltas = _joined_tool_deltas(last.tool_deltas or [], c.tool_deltas)
        else:
            out.append(c)
    return out


def _joined_tool_deltas(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool-call deltas of one read as few as they can be: a delta that only continues the previous
    one's call (same index, no new id or name) has its argument text appended to it."""
    out = list(before)
    for d in after:
        prev = out[-1] if out else None
        fn = d.get("function") or {}
        if (
            prev is not None
            and prev.get("index", 0) == d.get("index", 0)
            and not d.get("id")
            and not fn.get("name")
            and set(d) <= {"index", "function", "type"}
            and set(fn) <= {"arguments", "name"}
        ):
            pfn = prev.get("function") or {}
            args = (pfn.get("arguments") or "") + (fn.get("arguments") or "")
            out[-1] = {**prev, "function": {**pfn, "arguments": args}}
        else:
            out.append(d)
    return out


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


def _env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (None: connect directly)."""
    import urllib.request
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(urlsplit(url).scheme)


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
