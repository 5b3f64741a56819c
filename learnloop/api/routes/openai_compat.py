"""OpenAI-compatible routes: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Errors use OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``); the routes parse
and answer their own errors so the ingest API's error shape stays as it is.
Every answer names the version that gave it (header ``x-learnloop-version`` and the ``model``
field), and its ``id`` is the id of the trajectory it is captured as, so feedback can be sent
on it to ``POST /v1/trajectories/{id}/feedback`` of the ingest API. The trajectory is stored before
the answer's end reaches the client (the whole body, or a stream's final chunk), so that feedback
sent the instant the answer arrives always finds it.

A model's answer is sent whatever text it holds: JSON escapes what UTF-8 cannot carry (a lone
surrogate, such as bytes that were not valid UTF-8), and the capture stores it losslessly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from learnloop.api.deps import ServingKey, bearer_matches
from learnloop.api.openapi import OPENAI_SHAPE, openai_error_responses, request_body
from learnloop.api.shutdown import ShuttingDown, next_chunk
from learnloop.errors import Conflict, LearnloopError, NotFound, Overloaded, UpstreamFailed, ValidationFailed
from learnloop.ids import new_id
from learnloop.serving import confidence
from learnloop.serving.backend import ChatRequest, Chunk
from learnloop.serving.chat_format import ROLES, normalize_messages, validate_tools
from learnloop.store.aliases import is_upstream

log = logging.getLogger("learnloop.serving")

VERSION_HEADER = "x-learnloop-version"
SCENARIO_HEADER = "x-learnloop-scenario"
USER_HEADER = "x-learnloop-user"


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionBody(BaseModel):
    # Unknown OpenAI fields (logprobs, response_format, ...) are accepted and ignored, as a drop-in should.
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[Any] = Field(
        json_schema_extra={
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role"],
                "properties": {
                    "role": {"enum": list(ROLES)},
                    "content": {"anyOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}]},
                },
            },
        },
        description="OpenAI chat messages; system, developer and user messages need non-empty text "
        "content, tool calls are an assistant's, their arguments JSON text.",
    )
    tools: list[Any] | None = None
    tool_choice: Any = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None


def openai_error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type, "param": param, "code": code}},
        status_code=status,
        headers=headers,
    )


def domain_error(exc: LearnloopError) -> JSONResponse:
    """Our domain errors in OpenAI's shape and status (an upstream's error keeps its own)."""
    if isinstance(exc, UpstreamFailed):
        headers = (
            None if exc.retry_after is None else {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        )
        return JSONResponse({"error": exc.error}, status_code=exc.status, headers=headers)
    if isinstance(exc, ShuttingDown):
        return openai_error(503, str(exc), type="server_error", code="server_shutting_down")
    if isinstance(exc, ValidationFailed):
        param = exc.problems[0][0] if exc.problems else None
        code = "context_length_exceeded" if "context" in str(exc) else None
        return openai_error(400, str(exc), param=param, code=code)
    if isinstance(exc, NotFound):
        return openai_error(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, Overloaded):
        return openai_error(
            429,
            str(exc),
            type="rate_limit_error",
            code="over_capacity",
            headers={"Retry-After": str(max(1, round(exc.retry_after)))},
        )
    if isinstance(exc, Conflict):
        return openai_error(409, str(exc), code="conflict")
    return openai_error(400, str(exc))


router = APIRouter(prefix="/v1", tags=["openai"])


def _gate(request: Request) -> tuple[Any, JSONResponse | None]:
    """(the serving runtime, or the error to answer): the API key, then whether serving is on."""
    state = request.app.state
    settings = state.settings
    key = settings.serving.api_key or settings.api_token
    if key is not None:
        if not bearer_matches(request, key):  # compared as bytes: any header is a 401 or a pass, never a 500
            return None, openai_error(
                401,
                "Missing or wrong API key: send 'Authorization: Bearer <key>' "
                "(serving.api_key, else LEARNLOOP_API_TOKEN).",
                code="invalid_api_key",
            )
    runtime = getattr(state, "serving", None)
    if runtime is None:
        reason = getattr(state, "serving_off_reason", None) or "Serving is off in this server."
        return None, openai_error(503, reason, type="server_error", code="no_model")
    return runtime, None


# Every route answers 503 while serving is off; 401 (when a key is set) and 400/413 (bodies) are
# added by learnloop.api.openapi, all in OpenAI's error shape.
_CHAT_BODY = request_body("ChatCompletionRequest", TypeAdapter(ChatCompletionBody))
_MARK = {"dependencies": [ServingKey], "openapi_extra": {OPENAI_SHAPE: True}}


@router.get("/models", **_MARK, responses=openai_error_responses(503, _503="Serving is off in this server."))
async def list_models(request: Request) -> Response:
    """The names a chat completion can use: `learnloop` (the alias), `base`, and every version id."""
    runtime, error = _gate(request)
    if error is not None:
        return error
    names = await asyncio.to_thread(runtime.model_names)
    return JSONResponse({"object": "list", "data": [_model_card(n) for n in names]})


@router.get(
    "/models/{model_id}",
    **_MARK,
    responses=openai_error_responses(
        404, 503, _404="No model by that name.", _503="Serving is off in this server."
    ),
)
async def get_model(request: Request, model_id: str) -> Response:
    runtime, error = _gate(request)
    if error is not None:
        return error
    names = await asyncio.to_thread(runtime.model_names)
    if model_id not in names:
        return domain_error(NotFound(f"The model {model_id!r} does not exist."))
    return JSONResponse(_model_card(model_id))


@router.post(
    "/chat/completions",
    dependencies=[ServingKey],
    responses=openai_error_responses(
        400,
        404,
        409,
        413,
        429,
        503,
        _400="Invalid request; `param` names the field.",
        _404="No model by that name.",
        _409="The named version cannot be served now.",
        _429="Generation slots are full; retry after Retry-After seconds.",
        _503="Serving is off in this server.",
    ),
    openapi_extra={OPENAI_SHAPE: True, **_CHAT_BODY},
)
async def chat_completions(request: Request) -> Response:
    """OpenAI's chat completion (tools, sampling, n, stop, seed, streaming);
    answered by the version the model names."""
    runtime, error = _gate(request)
    if error is not None:
        return error
    try:
        data = await request.body()
    except HTTPException as exc:  # the body limit, met while the body streamed in
        return openai_error(exc.status_code, str(exc.detail), code="request_too_large")
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return openai_error(400, f"The body is not valid JSON ({exc}).")
    if not isinstance(raw, dict):
        return openai_error(400, "The body must be a JSON object.")
    try:
        body = ChatCompletionBody.model_validate(raw)
    except ValidationError as exc:
        return _pydantic_error(exc.errors())
    return await _complete(runtime, request, body, raw)


def _pydantic_error(errors: list[Any]) -> JSONResponse:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in first["loc"] if p != "body") or None
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return openai_error(400, f"{param or 'body'}: {first['msg']}{more}", param=param)


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "learnloop"}


# Fields the proxy sets itself, or that are learnloop's own (metadata carries the scenario).
_NOT_FORWARDED = {"model", "messages", "stream", "stream_options", "metadata"}


def _chat_request(
    body: ChatCompletionBody, *, upstream: bool = False, raw: dict[str, Any] | None = None
) -> ChatRequest:
    """The request a backend answers. For an upstream the messages go on as the client sent them
    (image parts and all: the upstream decides what it takes) and so does every other field the
    client set (``extra``: from ``raw``, the JSON as sent and validated into ``body``, when given;
    dumping the model again cost more than the rest of this function); a local model gets them
    normalised for its chat template."""
    if upstream:
        messages = _checked_messages(body.messages)
        if raw is None:
            extra = {k: v for k, v in body.model_dump(exclude_unset=True).items() if k not in _NOT_FORWARDED}
        else:  # the fields the model declares as validated (coerced), any other as sent
            fields = ChatCompletionBody.model_fields
            extra = {
                k: getattr(body, k) if k in fields else v for k, v in raw.items() if k not in _NOT_FORWARDED
            }
        tools = validate_tools(body.tools)
    else:
        messages = normalize_messages(body.messages)
        extra = {}
        tools = validate_tools(body.tools) if body.tool_choice != "none" else None
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise ValidationFailed("stop takes up to 4 non-empty strings.", [("stop", "up to 4 strings")])
    if (
        body.max_tokens is not None
        and body.max_completion_tokens is not None
        and body.max_tokens != body.max_completion_tokens
    ):
        raise ValidationFailed(
            "max_tokens and max_completion_tokens disagree; send one.", [("max_tokens", "one of")]
        )
    return ChatRequest(
        messages=messages,
        tools=tools,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=stop,
        seed=body.seed,
        n=body.n,
        extra=extra,
    )


def _checked_messages(messages: Any) -> list[dict[str, Any]]:
    """Messages as sent, checked only for what every chat endpoint needs: objects with a known role."""
    if not isinstance(messages, list) or not messages:
        raise ValidationFailed("messages must be a non-empty array.", [("messages", "non-empty array")])
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValidationFailed(
                f"messages[{i}] must be an object whose role is one of {', '.join(ROLES)}.",
                [(f"messages[{i}]", "role")],
            )
    return messages


async def _complete(
    runtime: Any, request: Request, body: ChatCompletionBody, raw: dict[str, Any] | None = None
) -> Response:
    try:
        user = request.headers.get(USER_HEADER) or body.user
        if body.model in runtime.aliases or body.model in ("base", "learnloop") or is_upstream(body.model):
            route = runtime.route(body.model, user)
        else:  # a version named directly may need loading first: off the event loop
            route = await asyncio.to_thread(runtime.route, body.model, user)
        chat = _chat_request(body, upstream=is_upstream(route.served), raw=raw)
    except LearnloopError as exc:
        return domain_error(exc)
    scenario = request.headers.get(SCENARIO_HEADER) or (body.metadata or {}).get("scenario")
    scenario = str(scenario)[:256] if scenario else None
    call = _Call(runtime, route, chat, body, scenario)
    headers = {VERSION_HEADER: route.served}
    if route.alias:
        headers["x-learnloop-alias"] = route.alias
    stream = runtime.backend_for(route.served).astream(route.served, chat)
    try:
        first = await next_chunk(stream)  # errors (context, capacity) surface as a status, not mid-stream
    except StopAsyncIteration:
        first = None
    except LearnloopError as exc:
        await stream.aclose()
        return domain_error(exc)
    if route.shadow is not None:
        call.start_shadow()
    if body.stream:
        return StreamingResponse(
            call.sse(first, stream),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache"},
        )
    try:
        await call.consume(first, stream)
        await call.store()  # before the client can see the id (and send feedback on it)
    except LearnloopError as exc:
        return domain_error(exc)
    finally:
        call.capture()  # a failed or cut answer is still recorded (a no-op once stored)
    return Response(_json(call.completion()), media_type="application/json", headers=headers)


def _json(data: Any) -> bytes:
    """orjson's bytes; the standard encoder's ASCII escapes when the data holds text UTF-8 cannot
    carry (a lone surrogate: a model's bytes that were not valid UTF-8), which clients decode back."""
    try:
        return orjson.dumps(data)
    except TypeError:
        return json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode()


class _Call:
    """One chat completion: its choices as they fill, its capture, and its shadow run."""

    def __init__(
        self, runtime: Any, route: Any, chat: ChatRequest, body: ChatCompletionBody, scenario: str | None
    ) -> None:
        self.runtime, self.route, self.chat, self.body, self.scenario = runtime, route, chat, body, scenario
        self.id = new_id()
        self.created = int(time.time())
        self.texts = [""] * chat.n
        self.finish: list[str | None] = [None] * chat.n
        self.tool_calls: list[list[dict[str, Any]] | None] = [None] * chat.n
        self.prompt_tokens = 0
        self.completion_tokens = [0] * chat.n
        self.started = time.perf_counter()
        self.first_token_s: float | None = None
        self.captured = False
        self.upstream = runtime.upstreams.get(route.served) if is_upstream(route.served) else None
        self.logprobs: list[list[dict[str, Any]]] = [[] for _ in range(chat.n)]
        # An upstream may have been asked for logprobs for the capture's confidence alone.
        self.show_logprobs = bool(chat.extra.get("logprobs"))

    def add(self, c: Chunk) -> None:
        if c.text and self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started
        if c.logprobs:
            self.logprobs[c.index].extend(c.logprobs)
        self.texts[c.index] += c.text
        if c.finish_reason is not None:
            self.finish[c.index] = c.finish_reason
            self.tool_calls[c.index] = c.tool_calls
            self.prompt_tokens = c.prompt_tokens
            self.completion_tokens[c.index] = c.completion_tokens

    async def consume(self, first: Chunk | None, stream: AsyncIterator[Chunk]) -> None:
        if first is not None:
            self.add(first)
        while True:
            try:
                c = await next_chunk(stream)
            except StopAsyncIteration:
                return
            self.add(c)

    def usage(self) -> dict[str, int]:
        done = sum(self.completion_tokens)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": self.prompt_tokens + done,
        }

    def completion(self) -> dict[str, Any]:
        choices = []
        for i in range(self.chat.n):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": self.texts[i] if not self.tool_calls[i] else (self.texts[i] or None),
            }
            if self.tool_calls[i]:
                message["tool_calls"] = self.tool_calls[i]
            logprobs = {"content": self.logprobs[i]} if self.show_logprobs and self.logprobs[i] else None
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "finish_reason": self.finish[i] or "stop",
                    "logprobs": logprobs,
                }
            )
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.route.served,
            "system_fingerprint": self.route.served,
            "choices": choices,
            "usage": self.usage(),
        }

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        data = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.route.served,
            "system_fingerprint": self.route.served,
            "choices": choices,
            **extra,
        }
        return b"data: " + _json(data) + b"\n\n"

    async def sse(self, first: Chunk | None, stream: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        try:
            for i in range(self.chat.n):
                yield self._chunk(
                    [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
                )
            pending = [first] if first is not None else []
            # Choices whose tool calls went out piece by piece (an upstream's deltas): their end's
            # assembled calls are for the capture only, or a client would get each call twice.
            streamed_tools = [False] * self.chat.n
            while True:
                if pending:
                    c = pending.pop()
                else:
                    try:
                        c = await next_chunk(stream)
                    except StopAsyncIteration:
                        break
                self.add(c)
                if c.finish_reason is not None and all(f is not None for f in self.finish):
                    await self.store()  # the last choice ended: stored before its end is sent
                delta: dict[str, Any] = {}
                if c.text:
                    delta["content"] = c.text
                if c.tool_deltas:
                    delta["tool_calls"] = c.tool_deltas
                    streamed_tools[c.index] = True
                elif c.tool_calls and not streamed_tools[c.index]:
                    delta["tool_calls"] = [{"index": k, **tc} for k, tc in enumerate(c.tool_calls)]
                if delta or (c.logprobs and self.show_logprobs):
                    choice: dict[str, Any] = {"index": c.index, "delta": delta, "finish_reason": None}
                    if c.logprobs and self.show_logprobs:
                        choice["logprobs"] = {"content": c.logprobs}
                    yield self._chunk([choice])
                if c.finish_reason is not None:
                    yield self._chunk([{"index": c.index, "delta": {}, "finish_reason": c.finish_reason}])
            await self.store()  # a no-op unless the stream ended without a finish reason
            opts = self.body.stream_options
            if opts is not None and opts.include_usage:
                yield self._chunk([], usage=self.usage())
            yield b"data: [DONE]\n\n"
        except Exception as exc:  # after the headers went out an error can only be an event
            if not isinstance(exc, LearnloopError):
                log.exception("generation failed mid-stream (%s)", self.id)
            error = {"message": str(exc), "type": "server_error"}
            if isinstance(exc, ShuttingDown):
                error["code"] = "server_shutting_down"
            yield b"data: " + _json({"error": error}) + b"\n\n"
        finally:
            await stream.aclose()  # on a disconnect: stops decoding and frees the slot
            self.capture()

    def start_shadow(self) -> None:
        """Run the candidate on the same request in the background; only its capture is kept."""

        async def shadow() -> None:
            target = self.route.shadow
            chat = self.chat
            if is_upstream(target) != is_upstream(self.route.served):  # the other kind of backend
                chat = _chat_request(self.body, upstream=is_upstream(target))
            try:
                results = await self.runtime.backend_for(target).achat(target, chat)
            except Exception as exc:  # a busy or failing candidate never affects the answer
                log.info("shadow run on %s skipped: %s", target, exc)
                return
            cap = self.runtime.capture
            if cap is None or not results:
                return
            r = results[0]
            fields: dict[str, Any] = dict(
                messages=self.body.messages,
                answer=r.text,
                tool_calls=r.tool_calls,
                model=target,
                scenario=self.scenario,
                tools=self.chat.tools,
                group=self.id,
                metadata={
                    "shadow": True,
                    "shadow_of": self.id,
                    "alias": self.route.alias,
                    "finish_reason": r.finish_reason,
                    "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens},
                },
            )
            if is_upstream(target):  # teacher data, sampled like any upstream answer
                up = self.runtime.upstreams[target]
                fields.update(model=up.model, model_version=target, source="teacher")
                cap.queue([cap.build(new_id(), **fields)])
            else:
                cap.record(new_id(), **fields)

        task = asyncio.get_running_loop().create_task(shadow())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def store(self) -> None:
        """Once per completion: the serving metrics, then the trajectories written before the answer
        ends (off the event loop; queued instead when the database cannot take them now)."""
        records = self._records()
        if not records:
            return
        if self.upstream is not None:
            # An upstream's answer is teacher data: sampled, and queued so it never delays the answer.
            self.runtime.capture.queue(records)
        else:
            await asyncio.to_thread(self.runtime.capture.store, records)

    def capture(self) -> None:
        """Once per completion, when ``store`` did not run (an error, a client gone): the serving
        metrics, then the trajectories, queued through the background writer."""
        records = self._records()
        if records and self.upstream is not None:
            self.runtime.capture.queue(records)
            return
        for record in records:
            self.runtime.capture.client.submit_trajectory(record, force=True)

    def _records(self) -> list[dict[str, Any]]:
        """The first call only: observe the serving metrics, then build one trajectory per choice."""
        if self.captured:
            return []
        self.captured = True
        from learnloop.watch import observe_serving

        cut = any(f in (None, "cancelled") for f in self.finish)
        elapsed = time.perf_counter() - self.started
        latency_ms = round(elapsed * 1000, 2)
        observe_serving(
            None if self.route.served == "base" else self.route.served,
            sum(self.completion_tokens),
            elapsed,
            status="cut" if cut else "ok",
        )
        self.runtime.count(self.route, self.prompt_tokens, sum(self.completion_tokens), ok=not cut)
        cap = self.runtime.capture
        if cap is None:
            return []
        records = []
        for i in range(self.chat.n):
            cut = self.finish[i] in (None, "cancelled")
            meta: dict[str, Any] = {
                "requested_model": self.route.requested,
                "finish_reason": self.finish[i] or "cancelled",
                "usage": {
                    "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens[i],
                },
                "params": {
                    "temperature": self.chat.temperature,
                    "top_p": self.chat.top_p,
                    "seed": self.chat.seed,
                    "max_tokens": self.chat.max_tokens,
                    "stream": self.body.stream,
                },
            }
            if self.route.alias:
                meta["alias"] = self.route.alias
            if cut:
                meta["cut"] = True  # the client went away before the answer ended
            if self.body.user:
                meta["user"] = self.body.user
            if self.body.metadata:
                meta["request_metadata"] = self.body.metadata
            if self.first_token_s is not None:
                meta["ttft_s"] = round(self.first_token_s, 4)
            meta["latency_ms"] = latency_ms
            who: dict[str, Any] = {"model": self.route.served}
            if self.upstream is not None:
                meta["upstream"] = self.upstream.name
                conf = confidence(self.logprobs[i])
                if conf is not None:
                    meta["confidence"] = conf  # what capture.keep_confident keeps
                who = {"model": self.upstream.model, "model_version": self.route.served, "source": "teacher"}
            try:
                records.append(
                    cap.build(
                        self.id if i == 0 else new_id(),
                        messages=self.body.messages,
                        answer=self.texts[i],
                        tool_calls=self.tool_calls[i],
                        scenario=self.scenario,
                        tools=self.chat.tools,
                        metadata=meta,
                        group=self.id if self.chat.n > 1 else None,
                        **who,
                    )
                )
            except Exception:  # capture must never break serving
                log.exception("could not capture served answer %s (choice %d)", self.id, i)
        return records


_background: set[asyncio.Task] = set()  # shadow runs, referenced until done
