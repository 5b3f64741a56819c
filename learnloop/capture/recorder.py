"""Recording one trajectory: the context manager, the decorator and the id they hand out at once.

Everything here runs on the application's thread, so it only builds plain dicts and hands the
finished record to the client's queue; validation against the wire format happens in the
background writer (except for input a caller passes in raw, which is checked where it arrives so
the mistake surfaces at the line that made it).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import inspect
import json
import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from learnloop.errors import ValidationFailed, invalid
from learnloop.ids import new_id
from learnloop.windows import WindowClock

if TYPE_CHECKING:
    from learnloop.capture.client import CaptureClient

F = TypeVar("F", bound=Callable[..., Any])

_now, _UTC = dt.datetime.now, dt.UTC

SOURCES = ("production", "teacher", "synthetic", "served")

_current: contextvars.ContextVar[TrajectoryRecorder | None] = contextvars.ContextVar(
    "learnloop_trajectory", default=None
)


_clocks: dict[str, WindowClock] = {}


def _window_of(client: Any, when: dt.datetime) -> str:
    """The id of the ``capture.window``-long window ``when`` falls in (the client's settings)."""
    capture = getattr(getattr(client, "settings", None), "capture", None)
    spec = getattr(capture, "window", None) or "1h"
    clock = _clocks.get(spec)
    if clock is None:
        clock = _clocks[spec] = WindowClock(spec)
    return clock(when)


def current_trajectory() -> TrajectoryRecorder | None:
    """The trajectory being recorded in this context (thread or asyncio task), if any."""
    return _current.get()


def _plain(obj: Any) -> Any:
    """OpenAI SDK objects (pydantic models) to plain dicts; dicts and lists copied one level deep."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", exclude_none=True)
    if isinstance(obj, dict):
        return dict(obj)
    return obj


def _content(value: Any, role: str) -> Any:
    if isinstance(value, (str, list)):
        return value
    raise ValidationFailed(
        f"{role} message content must be a string or a list of content parts, got {type(value).__name__}. "
        "Convert it to text first (e.g. json.dumps)."
    )


class TrajectoryRecorder:
    """One trajectory being recorded. ``id`` is its idempotency key, known from the start.

    Use it as a context manager (``with learnloop.trajectory(...) as t:``) or call ``record()``
    when done. An exception leaving the ``with`` block is recorded in ``metadata["error"]`` and
    re-raised.
    """

    __slots__ = (
        "id",
        "scenario",
        "group",
        "agent",
        "source",
        "model",
        "window",
        "tags",
        "metadata",
        "messages",
        "tools",
        "scores",
        "_feedback",
        "_client",
        "_token",
        "_keep",
        "_discard",
        "_done",
        "escape_unstorable",
    )

    def __init__(
        self,
        client: CaptureClient,
        *,
        scenario: str | None = None,
        agent: str | None = None,
        tags: Iterable[str] | None = None,
        group: str | None = None,
        source: str | None = None,
        metadata: dict[str, Any] | None = None,
        model: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        messages: Iterable[Any] | None = None,
        id: str | None = None,
        window: str | None = None,
        escape_unstorable: bool = False,
    ) -> None:
        if source is not None and source not in SOURCES:
            raise ValidationFailed(f"source must be one of {', '.join(SOURCES)}, got {source!r}.")
        self._client = client
        self.id = id or new_id()
        self.scenario = scenario
        self.group = group
        self.agent = agent
        self.source = source
        self.model = model
        self.window = window  # None: the time window the record's time falls in (capture.window)
        self.tags = list(tags) if tags else []
        self.metadata = dict(metadata) if metadata else {}
        self.tools = tools
        self.messages: list[dict[str, Any]] = []
        self.scores: dict[str, float] = {}
        self._feedback: list[dict[str, Any]] = []
        self._token: contextvars.Token | None = None
        self._keep = False
        self._discard = False
        self._done = False
        # Model output is data whatever it holds: text a database cannot store (NUL, lone surrogates)
        # is escaped reversibly and the record marked, instead of the whole trajectory being refused
        # (store.records.escape_unstorable). Set for served answers and a wrapped client's calls.
        self.escape_unstorable = escape_unstorable
        if messages:
            self.add_messages(messages)

    # -- messages (OpenAI chat format) ----------------------------------------------------

    def system(self, content: str) -> None:
        self.messages.append({"role": "system", "content": _content(content, "system")})

    def user(self, content: Any, **extra: Any) -> None:
        self.messages.append({"role": "user", "content": _content(content, "user"), **extra})

    def assistant(
        self, content: str | None = None, *, tool_calls: Iterable[Any] | None = None, **extra: Any
    ) -> None:
        if content is None and not tool_calls:
            raise ValidationFailed("an assistant message needs content or tool_calls.")
        msg: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls:
            msg["tool_calls"] = [_plain(tc) for tc in tool_calls]
        if extra:
            msg.update(extra)
        self.messages.append(msg)

    def tool(self, result: Any, *, tool_call_id: str, name: str | None = None) -> None:
        """The result of a tool call; non-text results are stored as JSON."""
        if not tool_call_id:
            raise ValidationFailed("a tool message needs the tool_call_id of the call it answers.")
        content = result if isinstance(result, str) else json.dumps(result, default=str, ensure_ascii=False)
        msg = {"role": "tool", "tool_call_id": tool_call_id, "content": content}
        if name:
            msg["name"] = name
        self.messages.append(msg)

    def add_message(self, message: Any) -> None:
        """Append one message in OpenAI chat format (a dict, or an OpenAI SDK message object); checked now."""
        from pydantic import ValidationError

        from learnloop.store.records import MESSAGE

        msg = _plain(message)
        try:
            MESSAGE.validate_python(msg)
        except ValidationError as exc:
            raise invalid(exc, "message", f"messages.{len(self.messages)}") from None
        self.messages.append(msg)

    def add_messages(self, messages: Iterable[Any]) -> None:
        for m in messages:
            self.add_message(m)

    # -- outcome --------------------------------------------------------------------------

    def reward(self, name: str, value: float) -> None:
        """A reward from the environment (stored as a score with source ``env``)."""
        if not name:
            raise ValidationFailed("a reward needs a name, e.g. t.reward('task_success', 1.0).")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValidationFailed(f"reward {name!r} must be a number, got {value!r}.") from None
        if not math.isfinite(number):  # the store refuses it: say so here, not by losing the trajectory later
            raise ValidationFailed(f"reward {name!r} must be a finite number, got {value!r}.")
        self.scores[name] = number

    def feedback(self, **signals: Any) -> None:
        """Feedback on this trajectory: rating, thumbs, success, correction, comment, author, metadata."""
        self._feedback.append(validate_feedback(signals))

    def keep(self) -> None:
        """Record this trajectory whatever the sample rate."""
        self._keep = True

    def discard(self) -> None:
        """Record nothing for this trajectory."""
        self._discard = True

    def to_record(self) -> dict[str, Any]:
        # Stamped now, not when stored: after an outage the spool delivers records hours late.
        created = _now(tz=_UTC)
        rec: dict[str, Any] = {
            "id": self.id,
            "messages": self.messages,
            "metadata": self.metadata,
            "created_at": created,
            "window": self.window or _window_of(self._client, created),
        }
        if self.scenario is not None:
            rec["scenario"] = self.scenario
        if self.group is not None:
            rec["group"] = self.group
        if self.agent is not None:
            rec["agent"] = self.agent
        if self.source is not None:
            rec["source"] = self.source
        if self.model is not None:
            rec["model"] = self.model
        if self.tools:
            rec["tools"] = self.tools
        if self.tags:
            rec["tags"] = self.tags
        if self.scores:
            rec["scores"] = self.scores
        if self._feedback:
            rec["feedback"] = self._feedback[0]
        if self.escape_unstorable:
            from learnloop.store.records import escape_unstorable

            rec = escape_unstorable(rec)
        return rec

    def record(self) -> bool:
        """Finish and hand the trajectory to the writer; True if it was kept (not sampled out)."""
        if self._done:
            return False
        self._done = True
        if self._discard:
            return False
        if not self.messages:
            import logging

            logging.getLogger("learnloop.capture").warning(
                "learnloop capture: trajectory %s has no messages; nothing was recorded", self.id
            )
            return False
        return self._client.submit_trajectory(self.to_record(), self._feedback[1:], force=self._keep)

    def __enter__(self) -> TrajectoryRecorder:
        self._token = _current.set(self)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self._token is not None:
            try:
                _current.reset(self._token)
            except ValueError:  # exited in another context (e.g. a generator finished elsewhere)
                pass
            self._token = None
        if exc is not None:
            self.metadata["error"] = {"type": type(exc).__name__, "message": str(exc)[:4000]}
        try:
            self.record()
        except Exception:  # recording must never replace the app's own exception or break its flow
            import logging

            logging.getLogger("learnloop.capture").exception(
                "learnloop capture: could not record trajectory %s", self.id
            )

    async def __aenter__(self) -> TrajectoryRecorder:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)


def validate_feedback(signals: dict[str, Any]) -> dict[str, Any]:
    """Check feedback where it is given (it is rare, and a mistake should fail at its line)."""
    from pydantic import ValidationError

    from learnloop.store.records import FEEDBACK

    try:
        fb = FEEDBACK.validate_python(signals)
    except ValidationError as exc:
        raise invalid(exc, "feedback", "feedback") from None
    return FEEDBACK.dump_python(fb, mode="json", exclude_none=True)


def _describe_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    try:
        bound = inspect.signature(fn).bind_partial(*args, **kwargs)
        values = dict(bound.arguments)
    except (TypeError, ValueError):
        values = {"args": list(args), **kwargs}
    if len(values) == 1:
        only = next(iter(values.values()))
        if isinstance(only, str):
            return only
    return json.dumps(values, default=str, ensure_ascii=False)


def _describe_result(result: Any) -> str:
    return result if isinstance(result, str) else json.dumps(result, default=str, ensure_ascii=False)


def traced(
    fn: F | None = None,
    *,
    scenario: str | None = None,
    agent: str | None = None,
    tags: Iterable[str] | None = None,
    group: str | None = None,
    source: str | None = None,
    metadata: dict[str, Any] | None = None,
    model: str | None = None,
    window: str | None = None,
    client: CaptureClient | None = None,
) -> Any:
    """Record each call of a function (sync or async) as a trajectory.

    Inside the call, ``learnloop.current_trajectory()`` is the trajectory: add messages, rewards
    or feedback to it. If the function adds no messages, the call's arguments become the user
    message and its return value the assistant message. ``scenario`` defaults to the function's
    qualified name; ``model`` names the model that answered, ``window`` overrides the time window.
    """

    def decorate(func: F) -> F:
        fields = {
            "scenario": scenario or func.__qualname__,
            "agent": agent,
            "tags": tags,
            "group": group,
            "source": source,
            "metadata": metadata,
            "model": model,
            "window": window,
        }
        if inspect.iscoroutinefunction(func):
            return _traced_async(func, client, fields)  # type: ignore[return-value]
        return _traced_sync(func, client, fields)  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


def _start_call(client: CaptureClient | None, fields: dict[str, Any]) -> TrajectoryRecorder:
    from learnloop.capture.client import get_client

    return TrajectoryRecorder(client or get_client(), **fields)


def _end_call(
    t: TrajectoryRecorder,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    started: float,
    result: Any,
    failed: bool,
) -> None:
    """The call's duration, and its arguments and result as messages when the function added none."""
    t.metadata["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
    if not t.messages:
        t.user(_describe_call(func, args, kwargs))
        if not failed and result is not None:
            t.assistant(_describe_result(result))


def _traced_sync(
    func: Callable[..., Any], client: CaptureClient | None, fields: dict[str, Any]
) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = _start_call(client, fields)
        started = time.perf_counter()
        with t:
            try:
                result = func(*args, **kwargs)
            except BaseException:
                _end_call(t, func, args, kwargs, started, None, failed=True)
                raise
            _end_call(t, func, args, kwargs, started, result, failed=False)
            return result

    return wrapper


def _traced_async(
    func: Callable[..., Any], client: CaptureClient | None, fields: dict[str, Any]
) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = _start_call(client, fields)
        started = time.perf_counter()
        with t:
            try:
                result = await func(*args, **kwargs)
            except BaseException:
                _end_call(t, func, args, kwargs, started, None, failed=True)
                raise
            _end_call(t, func, args, kwargs, started, result, failed=False)
            return result

    return wrapper
