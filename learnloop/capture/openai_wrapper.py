"""A drop-in wrapper of the official ``openai`` client that records chat completions.

``wrap_openai(client)`` patches ``client.chat.completions.create`` on that client object and
returns the same client, so the app keeps its types, its return values and its stream objects:
a streamed response is the very ``Stream``/``AsyncStream`` the SDK made, with its chunk iterator
wrapped to also accumulate the chunks; the record is assembled when the stream ends (or is closed
or dropped early, then marked ``stream_incomplete``). Recording never raises into the app.

Inside ``with learnloop.trajectory(...)`` the calls are added to that trajectory (new request
messages and the answer) instead of becoming trajectories of their own.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from typing import Any

from learnloop.capture.recorder import TrajectoryRecorder, _plain, current_trajectory

log = logging.getLogger("learnloop.capture")

_WRAPPED_MARK = "__learnloop_wrapped__"
# Request parameters worth keeping beside the record (sampling settings shape the answer).
_KEPT_PARAMS = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "tool_choice",
    "reasoning_effort",
)


def wrap_openai(client: Any, **trajectory_defaults: Any) -> Any:
    """Record every ``client.chat.completions.create`` call; returns ``client`` itself.

    ``trajectory_defaults`` (scenario, agent, tags, group, source, metadata, window, model) apply to
    the trajectories made from calls outside any ``learnloop.trajectory()`` (``model`` replaces the
    model the response names; ``window`` the time window assigned from the call's time); ``capture_client=``
    selects a ``CaptureClient`` other than the process default.
    """
    try:
        completions = client.chat.completions
        original = completions.create
    except AttributeError:
        raise TypeError(
            f"wrap_openai expects an openai.OpenAI or openai.AsyncOpenAI client, got {type(client).__name__}."
        ) from None
    if getattr(original, _WRAPPED_MARK, False):
        return client
    capture_client = trajectory_defaults.pop("capture_client", None)

    # The SDK's async create is wrapped by a plain decorator, so the resource class tells async apart.
    if inspect.iscoroutinefunction(original) or type(completions).__name__.startswith("Async"):

        @functools.wraps(original)
        async def acreate(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = await original(*args, **kwargs)
            except Exception as exc:
                _safely(_record, kwargs, None, None, started, exc, trajectory_defaults, capture_client)
                raise
            if kwargs.get("stream"):
                _safely(_hook_async_stream, result, kwargs, started, trajectory_defaults, capture_client)
            else:
                _safely(
                    _record,
                    kwargs,
                    _plain_response(result),
                    None,
                    started,
                    None,
                    trajectory_defaults,
                    capture_client,
                )
            return result

        setattr(acreate, _WRAPPED_MARK, True)
        completions.create = acreate
    else:

        @functools.wraps(original)
        def create(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = original(*args, **kwargs)
            except Exception as exc:
                _safely(_record, kwargs, None, None, started, exc, trajectory_defaults, capture_client)
                raise
            if kwargs.get("stream"):
                _safely(_hook_stream, result, kwargs, started, trajectory_defaults, capture_client)
            else:
                _safely(
                    _record,
                    kwargs,
                    _plain_response(result),
                    None,
                    started,
                    None,
                    trajectory_defaults,
                    capture_client,
                )
            return result

        setattr(create, _WRAPPED_MARK, True)
        completions.create = create
    return client


def _safely(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # capture must never break the app's call
        log.exception("learnloop capture: could not record an OpenAI call")


def _plain_response(result: Any) -> dict[str, Any] | None:
    if hasattr(result, "model_dump"):
        return result.model_dump(mode="json", exclude_none=True)
    return result if isinstance(result, dict) else None


# -- streams ------------------------------------------------------------------------------


class _ChunkAssembler:
    """Rebuilds the answer of a streamed completion from its chunks (choice 0)."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.model: str | None = None
        self.id: str | None = None
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.role = "assistant"
        self.chunks = 0
        self.first_chunk_at: float | None = None

    def add(self, chunk: Any) -> None:
        self.chunks += 1
        if self.first_chunk_at is None:
            self.first_chunk_at = time.perf_counter()
        self.model = getattr(chunk, "model", None) or self.model
        self.id = getattr(chunk, "id", None) or self.id
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = _plain(usage)
        for choice in getattr(chunk, "choices", None) or ():
            if getattr(choice, "index", 0) != 0:
                continue
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
            delta = choice.delta
            if delta is None:
                continue
            if getattr(delta, "role", None):
                self.role = delta.role
            if delta.content:
                self.content.append(delta.content)
            for tc in getattr(delta, "tool_calls", None) or ():
                slot = self.tool_calls.setdefault(
                    tc.index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                )
                if tc.id:
                    slot["id"] = tc.id
                if getattr(tc, "type", None):
                    slot["type"] = tc.type
                fn = tc.function
                if fn is not None:
                    if fn.name:
                        slot["function"]["name"] += fn.name
                    if fn.arguments:
                        slot["function"]["arguments"] += fn.arguments

    def response(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": self.role,
            "content": "".join(self.content) if self.content else None,
        }
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        out: dict[str, Any] = {
            "id": self.id,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
        }
        if self.usage is not None:
            out["usage"] = self.usage
        return out


def _hook_stream(
    stream: Any, kwargs: dict[str, Any], started: float, defaults: dict[str, Any], cc: Any
) -> None:
    inner = stream._iterator  # the SDK's own chunk generator; Stream.__iter__/__next__ read it
    asm = _ChunkAssembler()

    def tee() -> Any:
        error: BaseException | None = None
        complete = False
        try:
            for chunk in inner:
                _safely(asm.add, chunk)
                yield chunk
            complete = True
        except GeneratorExit:
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            _safely(_record, kwargs, asm.response(), asm, started, error, defaults, cc, complete)

    stream._iterator = tee()


def _hook_async_stream(
    stream: Any, kwargs: dict[str, Any], started: float, defaults: dict[str, Any], cc: Any
) -> None:
    inner = stream._iterator
    asm = _ChunkAssembler()

    async def tee() -> Any:
        error: BaseException | None = None
        complete = False
        try:
            async for chunk in inner:
                _safely(asm.add, chunk)
                yield chunk
            complete = True
        except GeneratorExit:
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            _safely(_record, kwargs, asm.response(), asm, started, error, defaults, cc, complete)

    stream._iterator = tee()


# -- the record ---------------------------------------------------------------------------


def _record(
    kwargs: dict[str, Any],
    response: dict[str, Any] | None,
    asm: _ChunkAssembler | None,
    started: float,
    error: BaseException | None,
    defaults: dict[str, Any],
    cc: Any,
    complete: bool = True,
) -> None:
    request_messages = [_plain(m) for m in kwargs.get("messages") or ()]
    answer = None
    call_meta: dict[str, Any] = {"latency_ms": round((time.perf_counter() - started) * 1000, 3)}
    if response is not None:
        choices = response.get("choices") or []
        if choices:
            answer = choices[0].get("message")
            if choices[0].get("finish_reason"):
                call_meta["finish_reason"] = choices[0]["finish_reason"]
            if len(choices) > 1:
                call_meta["choices"] = len(choices)
        if response.get("usage"):
            call_meta["usage"] = response["usage"]
        if response.get("id"):
            call_meta["response_id"] = response["id"]
        if answer is not None and answer.get("content") is None and not answer.get("tool_calls"):
            answer = None  # an empty streamed answer (closed at once): nothing the model said
    if asm is not None:
        call_meta["stream"] = True
        if asm.first_chunk_at is not None:
            call_meta["time_to_first_chunk_ms"] = round((asm.first_chunk_at - started) * 1000, 3)
        if not complete:
            call_meta["stream_incomplete"] = True
    params = {k: kwargs[k] for k in _KEPT_PARAMS if k in kwargs and _is_given(kwargs[k])}
    if params:
        call_meta["params"] = _plain(params)
    model = (response or {}).get("model") or kwargs.get("model")
    tools = kwargs.get("tools")
    tools = [_plain(t) for t in tools] if _is_given(tools) and tools else None

    t = current_trajectory()
    if t is not None:
        _add_to_trajectory(t, request_messages, answer, model, tools, call_meta, error)
        return
    from learnloop.capture.client import get_client

    client = cc or get_client()
    fields = dict(defaults)
    metadata = dict(fields.pop("metadata", None) or {})
    metadata.update(call_meta)
    # A model= given to wrap_openai names the model on purpose (e.g. a teacher's label): it wins.
    chosen_model = fields.pop("model", None) or model
    rec = client.trajectory(
        model=chosen_model, tools=tools, metadata=metadata, escape_unstorable=True, **fields
    )
    rec.messages.extend(request_messages)
    if answer is not None:
        rec.messages.append(answer)
    if error is not None:
        rec.metadata["error"] = {"type": type(error).__name__, "message": str(error)[:4000]}
    rec.record()


def _add_to_trajectory(
    t: TrajectoryRecorder,
    request_messages: list[dict[str, Any]],
    answer: dict[str, Any] | None,
    model: str | None,
    tools: list[dict[str, Any]] | None,
    call_meta: dict[str, Any],
    error: BaseException | None,
) -> None:
    # The model's answer is data whatever it holds: stored escaped rather than refused (see recorder).
    t.escape_unstorable = True
    # The request normally repeats the conversation so far: add only what the trajectory lacks.
    have = t.messages
    n = len(have)
    if len(request_messages) >= n and request_messages[:n] == have:
        t.messages.extend(request_messages[n:])
    else:
        t.messages.extend(request_messages)
    if answer is not None:
        t.messages.append(answer)
    if model and not t.model:
        t.model = model
    if tools and not t.tools:
        t.tools = tools
    calls = t.metadata.setdefault("llm_calls", [])
    calls.append(call_meta)
    if error is not None:
        call_meta["error"] = {"type": type(error).__name__, "message": str(error)[:4000]}


def _is_given(value: Any) -> bool:
    # The SDK marks omitted parameters with its own sentinel types (NotGiven / Omit).
    return value is not None and type(value).__name__ not in ("NotGiven", "Omit")
