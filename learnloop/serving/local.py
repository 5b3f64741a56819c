"""LocalBackend: transformers + peft in this process, the base loaded once, adapters loaded by name."""

from __future__ import annotations

import asyncio
import queue
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from learnloop.errors import NotFound, ValidationFailed
from learnloop.serving.backend import BASE, ChatRequest, ChatResult, Chunk
from learnloop.serving.chat_format import (
    normalize_messages,
    parse_tool_calls,
    render_for_template,
    validate_tools,
)
from learnloop.serving.engine import BatchEngine, Event, Sequence

# Backends alive in this process, so an evaluation run by the in-process daemon answers through the
# server's batcher (``running_backend``) instead of loading the model a second time beside it.
_RUNNING: list[weakref.ref[LocalBackend]] = []  # in the order they were made
_RUNNING_LOCK = threading.Lock()


class LocalBackend:
    """Answers chat requests with the base model or any loaded adapter; concurrent requests share batches.

    ``base_model`` is a prepared name (``smollm2``), an HF folder or a GGUF file. ``background_slots``:
    rows kept for background work (evaluation) beside ``max_batch_size`` rows of requests (default: as
    many). ``decoder``: use the CPU decoder where it applies (False: transformers' forward always);
    ``merge_after``: decode steps with one adapter alone before it is folded into the weights (0: never).
    """

    def __init__(
        self,
        base_model: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 8,
        max_queued: int = 64,
        default_max_tokens: int = 512,
        data_dir: Path | None = None,
        threads: int | None = None,
        background_slots: int | None = None,
        decoder: bool = True,
        merge_after: int = 64,
    ) -> None:
        if threads is not None:  # process-wide: torch has one intra-op pool
            import torch

            torch.set_num_threads(threads)
        from learnloop.models import load_base, load_tokenizer, pick_device, pick_dtype, resolve_base_model

        self.base_path = resolve_base_model(base_model, data_dir)
        self.base_model = str(base_model)
        dev = pick_device(device)
        model = load_base(self.base_path, dev, pick_dtype(dtype, dev))
        model.eval()
        self.tokenizer = load_tokenizer(self.base_path)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValidationFailed(
                f"The base model at {self.base_path} has no chat template; serving needs a chat model."
            )
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.default_max_tokens = default_max_tokens
        self.engine = BatchEngine(
            model,
            self.tokenizer,
            max_batch_size=max_batch_size,
            max_queued=max_queued,
            background_slots=background_slots,
            decoder=decoder,
            merge_after=merge_after,
        )
        self._adapters: dict[str, Path] = {}
        self.device = str(dev)
        with _RUNNING_LOCK:
            _RUNNING.append(weakref.ref(self))

    # -- adapters ------------------------------------------------------------------------------

    def load_adapter(self, name: str, path: Path | str) -> None:
        """Load the LoRA adapter at ``path`` under ``name`` beside the others (no-op if loaded)."""
        if name == BASE:
            raise ValidationFailed(f"{BASE!r} names the base model; pick another adapter name.")
        if name in self._adapters:
            return
        path = Path(path)
        if not (path / "adapter_config.json").is_file():
            raise NotFound(f"No LoRA adapter at {path} (adapter_config.json is missing).")
        self.engine.load_adapter(name, path)
        self._adapters[name] = path

    def unload_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise NotFound(f"Adapter {name!r} is not loaded.")
        self.engine.unload_adapter(name)
        del self._adapters[name]

    def list(self) -> list[str]:
        return [BASE, *self._adapters]

    def close(self) -> None:
        with _RUNNING_LOCK:
            _RUNNING[:] = [r for r in _RUNNING if r() not in (None, self)]
        self.engine.close()

    def background(self) -> BackgroundBackend:
        """This backend for background work (evaluation): its rows take the engine's background slots,
        so requests never wait for them; closing the view leaves the backend running."""
        return BackgroundBackend(self)

    # -- requests ------------------------------------------------------------------------------

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        messages = normalize_messages(request.messages)
        tools = validate_tools(request.tools)
        template = self.tokenizer.chat_template or ""
        text = self.tokenizer.apply_chat_template(
            render_for_template(messages, tools, template),
            tools=tools,
            add_generation_prompt=True,
            tokenize=False,
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _sequences(
        self,
        model: str,
        request: ChatRequest,
        emit_for: Any,
        *,
        stream: bool = True,
        background: bool = False,
    ) -> list[Sequence]:
        if model != BASE and model not in self._adapters:
            raise NotFound(f"Model {model!r} is not loaded here; loaded: {', '.join(self.list())}.")
        if request.n < 1:
            raise ValidationFailed("n must be at least 1.", [("n", ">= 1")])
        ids = self.prompt_ids(request)
        room = self.context_length - len(ids)
        if room <= 0:
            raise ValidationFailed(
                f"The prompt is {len(ids)} tokens; this model's context is {self.context_length} tokens "
                "(shorten the messages).",
                [("messages", "too long")],
            )
        max_new = request.max_tokens if request.max_tokens is not None else min(self.default_max_tokens, room)
        if max_new < 1:
            raise ValidationFailed("max_tokens must be at least 1.", [("max_tokens", ">= 1")])
        if max_new > room:
            raise ValidationFailed(
                f"max_tokens is {max_new} but the prompt is {len(ids)} tokens and this model's context is "
                f"{self.context_length}: at most {room} tokens can be generated.",
                [("max_tokens", f"<= {room}")],
            )
        return [
            Sequence(
                prompt_ids=ids,
                adapter=None if model == BASE else model,
                max_new_tokens=max_new,
                temperature=request.temperature,
                top_p=request.top_p,
                stop=list(request.stop or []),
                emit=emit_for(i),
                seed=None if request.seed is None else request.seed + i,
                stream=stream,
                background=background,
            )
            for i in range(request.n)
        ]

    def chat(self, model: str, request: ChatRequest, *, background: bool = False) -> list[ChatResult]:
        results: list[ChatResult | None] = [None] * max(1, request.n)
        texts = [""] * max(1, request.n)
        done: queue.SimpleQueue[tuple[int, Event]] = queue.SimpleQueue()
        # the text arrives whole at the end: no per-token detokenizing or events for a blocking call
        seqs = self._sequences(
            model, request, lambda i: lambda ev: done.put((i, ev)), stream=False, background=background
        )
        self.engine.submit(seqs)
        remaining = len(seqs)
        try:
            while remaining:
                i, ev = done.get()
                texts[i] += ev.text
                if ev.finish is not None:
                    remaining -= 1
                    if ev.error is not None:
                        raise ev.error
                    results[i] = _result(texts[i], ev, bool(request.tools))
        finally:
            for s in seqs:
                s.cancel()
        return [r for r in results if r is not None]

    def stream(self, model: str, request: ChatRequest) -> Iterator[str]:
        q: queue.SimpleQueue[Event] = queue.SimpleQueue()
        seqs = self._sequences(model, ChatRequest(**{**request.__dict__, "n": 1}), lambda i: q.put)
        self.engine.submit(seqs)
        try:
            while True:
                ev = q.get()
                if ev.text:
                    yield ev.text
                if ev.finish is not None:
                    if ev.error is not None:
                        raise ev.error
                    return
        finally:
            seqs[0].cancel()

    async def astream(self, model: str, request: ChatRequest) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

        def emit_for(i: int) -> Any:
            return lambda ev: loop.call_soon_threadsafe(q.put_nowait, (i, ev))

        seqs = self._sequences(model, request, emit_for)
        self.engine.submit(seqs)
        # With tools the answer is held back until it ends, so a tool call is never streamed as text.
        hold = bool(request.tools)
        texts = [""] * len(seqs)
        remaining = len(seqs)
        try:
            while remaining:
                i, ev = await q.get()
                if hold:
                    texts[i] += ev.text
                elif ev.text:
                    yield Chunk(index=i, text=ev.text)
                if ev.finish is None:
                    continue
                remaining -= 1
                if ev.error is not None:
                    raise ev.error
                if hold:
                    r = _result(texts[i], ev, True)
                    yield Chunk(
                        index=i,
                        text=r.text,
                        finish_reason=r.finish_reason,
                        prompt_tokens=r.prompt_tokens,
                        completion_tokens=r.completion_tokens,
                        tool_calls=r.tool_calls,
                    )
                else:
                    yield Chunk(
                        index=i,
                        finish_reason=ev.finish,
                        prompt_tokens=ev.prompt_tokens,
                        completion_tokens=ev.completion_tokens,
                    )
        finally:
            for s in seqs:  # a disconnect closes this generator: stop decoding and free the slots
                s.cancel()

    async def achat(self, model: str, request: ChatRequest) -> list[ChatResult]:
        texts: dict[int, str] = {}
        results: dict[int, ChatResult] = {}
        async for c in self.astream(model, request):
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason is not None:
                results[c.index] = ChatResult(
                    texts[c.index], c.finish_reason, c.prompt_tokens, c.completion_tokens, c.tool_calls
                )
        return [results[i] for i in sorted(results)]


class BackgroundBackend:
    """A running LocalBackend seen by background work: the same adapters and batcher; ``chat`` (what
    an evaluation calls) runs as background rows, streams as requests."""

    def __init__(self, backend: LocalBackend) -> None:
        self._backend = backend
        self.base_path = backend.base_path

    def load_adapter(self, name: str, path: Path | str) -> None:
        self._backend.load_adapter(name, path)

    def unload_adapter(self, name: str) -> None:
        self._backend.unload_adapter(name)

    def list(self) -> list[str]:
        return self._backend.list()

    def chat(self, model: str, request: ChatRequest) -> list[ChatResult]:
        return self._backend.chat(model, request, background=True)

    def stream(self, model: str, request: ChatRequest) -> Iterator[str]:
        return self._backend.stream(model, request)

    def astream(self, model: str, request: ChatRequest) -> AsyncIterator[Chunk]:
        return self._backend.astream(model, request)

    def close(self) -> None:
        """Nothing to release: the backend belongs to the server."""


def running_backend(base_model: str | Path, data_dir: Path | None = None, device: str = "auto") -> Any:
    """A LocalBackend serving ``base_model`` in this process (on ``device`` unless 'auto'), or None."""
    from learnloop.errors import LearnloopError
    from learnloop.models import resolve_base_model

    try:
        path = Path(resolve_base_model(base_model, data_dir)).resolve()
    except LearnloopError:
        return None  # the caller's own load says what is wrong with the name
    with _RUNNING_LOCK:
        running = [b for b in (r() for r in _RUNNING) if b is not None]
    for backend in reversed(running):  # the newest first: a server's, made after any leftover
        if Path(backend.base_path).resolve() == path and device in ("auto", backend.device):
            return backend
    return None


def _result(text: str, ev: Event, tools: bool) -> ChatResult:
    calls = None
    finish = ev.finish or "stop"
    if tools:
        content, calls = parse_tool_calls(text)
        if calls:
            text, finish = content or "", "tool_calls"
    return ChatResult(text, finish, ev.prompt_tokens, ev.completion_tokens, calls)
