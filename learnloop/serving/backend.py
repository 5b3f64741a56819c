"""The one interface every inference backend implements (local transformers + peft, vLLM).

Serving answers OpenAI requests through it and evaluation generates held-out answers through it,
so a candidate is measured exactly as it would be served. ``model`` is ``"base"`` or the name an
adapter was loaded under (a version id, which never changes meaning).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

BASE = "base"


@dataclass
class ChatRequest:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    # Further OpenAI fields (tool_choice, response_format, logprobs ...): local backends ignore them,
    # an upstream passes them on.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChatResult:
    text: str
    finish_reason: str  # "stop", "length" or "tool_calls"
    prompt_tokens: int
    completion_tokens: int
    tool_calls: list[dict[str, Any]] | None = None


@dataclass
class Chunk:
    """One piece of a streamed answer (``astream``): a text delta of choice ``index``, or its end."""

    index: int = 0
    text: str = ""
    finish_reason: str | None = None  # set on the last chunk of a choice; "cancelled" when cut short
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: list[dict[str, Any]] | None = None  # OpenAI's logprobs.content of this piece, when given
    # Tool-call pieces as a provider streamed them (OpenAI's delta.tool_calls, each with its index),
    # sent on at once; the choice's end still carries the assembled calls in ``tool_calls``.
    tool_deltas: list[dict[str, Any]] | None = None


class ServingBackend(Protocol):
    def load_adapter(self, name: str, path: Path) -> None:
        """Make ``name`` answerable; loading an already loaded name is a no-op (names are immutable)."""

    def unload_adapter(self, name: str) -> None: ...

    def list(self) -> list[str]:
        """Names that can be answered now, ``"base"`` included."""

    def chat(self, model: str, request: ChatRequest) -> list[ChatResult]:
        """One result per ``request.n``; blocks until done."""

    def stream(self, model: str, request: ChatRequest) -> Iterator[str]:
        """Text deltas as they are generated (n = 1)."""

    def astream(self, model: str, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Chunks of every choice as they are generated, for the HTTP server. Closing the iterator
        (``aclose``, e.g. when the client disconnects) stops the generation and frees its slot."""
