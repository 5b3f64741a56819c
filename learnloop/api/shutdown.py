"""The server is shutting down (Ctrl-C, SIGTERM): answers in flight end at once with a clear error
instead of holding the exit for the 20-60 s a long generation takes.

``learnloop serve`` sets ``SHUTTING_DOWN`` from its signal handler; the OpenAI routes read the next
chunk through :func:`next_chunk`, which gives up within ``POLL`` seconds of it. A streamed answer then
ends with an error event, a whole one with 503; the answer so far is still captured.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator
from typing import TypeVar

from learnloop.errors import LearnloopError

T = TypeVar("T")
SHUTTING_DOWN = threading.Event()
POLL = 0.2
MESSAGE = "The learnloop server is shutting down: this answer was cut short. Retry once it is back up."


class ShuttingDown(LearnloopError):
    """The server stopped answering because it is shutting down; retry against it once it is back."""


class _Watch:
    """One event loop's requests waiting on a next chunk, and the one task that cuts them when the
    server starts shutting down (checked every ``POLL`` seconds while any waits)."""

    def __init__(self) -> None:
        self.waiting: set[asyncio.Task[object]] = set()
        self.cut: set[asyncio.Task[object]] = set()
        self.dog: asyncio.Task[None] | None = None

    async def run(self) -> None:
        try:
            while self.waiting:
                await asyncio.sleep(POLL)
                if SHUTTING_DOWN.is_set():
                    for task in list(self.waiting):
                        self.cut.add(task)
                        task.cancel()  # raised where it waits: in the stream, which stops its decoding
        finally:
            self.dog = None


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watch] = weakref.WeakKeyDictionary()


async def next_chunk(stream: AsyncIterator[T]) -> T:
    """``await stream.__anext__()``, unless the server starts shutting down first (ShuttingDown).

    The wait is the caller's own (no task per chunk: starting one and waiting on it with a timeout
    cost more than the rest of handing a chunk on); one watchdog task per event loop cancels the
    waiting requests once ``SHUTTING_DOWN`` is set, and each turns its cancellation into ShuttingDown.
    The stream has then been cancelled (its generation stopped); the caller closes it."""
    if SHUTTING_DOWN.is_set():
        raise ShuttingDown(MESSAGE)
    task = asyncio.current_task()
    if task is None:  # not in a task (cannot be cancelled for us): wait as the caller asked
        return await stream.__anext__()
    loop = task.get_loop()
    watch = _watches.get(loop)
    if watch is None:
        watch = _watches[loop] = _Watch()
    watch.waiting.add(task)
    if watch.dog is None:
        watch.dog = loop.create_task(watch.run())
    try:
        return await stream.__anext__()
    except asyncio.CancelledError:
        if task not in watch.cut:
            raise  # someone else's cancellation (a client gone, a timeout): theirs to handle
        watch.cut.discard(task)
        task.uncancel()
        raise ShuttingDown(MESSAGE) from None
    finally:
        watch.waiting.discard(task)
