"""The server is shutting down (Ctrl-C, SIGTERM): answers in flight end at once with a clear error
instead of holding the exit for the 20-60 s a long generation takes.

``learnloop serve`` sets ``SHUTTING_DOWN`` from its signal handler; the OpenAI routes read the next
chunk through :func:`next_chunk`, which gives up within ``POLL`` seconds of it. A streamed answer then
ends with an error event, a whole one with 503; the answer so far is still captured.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import TypeVar

from learnloop.errors import LearnloopError

T = TypeVar("T")
SHUTTING_DOWN = threading.Event()
POLL = 0.2
MESSAGE = "The learnloop server is shutting down: this answer was cut short. Retry once it is back up."


class ShuttingDown(LearnloopError):
    """The server stopped answering because it is shutting down; retry against it once it is back."""


async def next_chunk(stream: AsyncIterator[T]) -> T:
    """``await stream.__anext__()``, unless the server starts shutting down first (ShuttingDown)."""
    if SHUTTING_DOWN.is_set():
        raise ShuttingDown(MESSAGE)
    task = asyncio.ensure_future(stream.__anext__())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL)
            if done:
                return task.result()
            if SHUTTING_DOWN.is_set():
                raise ShuttingDown(MESSAGE)
    finally:
        if not task.done():
            task.cancel()  # stops the decoding behind it; the caller closes the stream
            with contextlib.suppress(BaseException):
                await task
