"""Continuous batching over one base model and any number of LoRA adapters, in-process.

Why not transformers' own continuous batching (``generate_batch`` / ``init_continuous_batching``)?
It packs every request into one flat token stream over a paged cache and applies one set of
weights to all of it, so a request cannot name its adapter; peft's mixed-adapter forward
(``adapter_names``, one name per row) needs a row per sequence. So this engine keeps rows:

- one worker thread owns the model: every forward pass, adapter load and unload happens there,
  between decode steps, so loading a new version never races a running batch;
- new requests join the running batch at the next step (their prompts are prefilled together,
  then their KV cache is left-padded to the batch's length and concatenated), finished or
  cancelled rows leave it at once, and columns no row needs any more are trimmed;
- each row carries its own adapter name, sampling settings and seeded generator, so the result of
  a request does not depend on what it was batched with (greedy output equals ``generate``).

Detokenization and stop strings are handled per row on the worker too, so a stop string ends the
row at once and frees its slot.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from learnloop.errors import Overloaded

log = logging.getLogger("learnloop.serving")

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass
class Event:
    """What a sequence reports: a text delta, or its end (``finish`` set) with token counts."""

    text: str = ""
    finish: str | None = None  # "stop", "length", "cancelled", "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: BaseException | None = None


@dataclass(eq=False)
class Sequence:
    prompt_ids: list[int]
    adapter: str | None  # None: the base model
    max_new_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    emit: Callable[[Event], None]
    seed: int | None = None
    cancelled: bool = False
    # filled by the engine
    generated: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of ``text`` already emitted
    _prefix_offset: int = 0
    _read_offset: int = 0
    generator: torch.Generator | None = None

    def cancel(self) -> None:
        """Stop generating; the row leaves the batch at the next step and reports finish='cancelled'."""
        self.cancelled = True


class BatchEngine:
    """Owns the model on one worker thread and decodes all active sequences together."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int = 8, max_queued: int = 64) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.max_queued = max_queued
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = eos_ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
        self._pending: deque[Sequence] = deque()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        self._wake = threading.Condition()
        self._active: list[Sequence] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None
        self._last: torch.Tensor | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="learnloop-serving-engine", daemon=True)
        self._thread.start()

    # -- the caller's side ------------------------------------------------------------------

    @property
    def load(self) -> tuple[int, int]:
        """(sequences decoding, sequences waiting)."""
        return len(self._active), len(self._pending)

    def submit(self, seqs: list[Sequence]) -> None:
        """Queue sequences for decoding; past the queue bound raise Overloaded (nothing is queued)."""
        with self._wake:
            free = max(0, self.max_batch_size - len(self._active) - len(self._pending))
            if len(self._pending) + len(seqs) - free > self.max_queued:
                raise Overloaded(
                    f"The model is busy ({len(self._active)} sequences decoding, "
                    f"{len(self._pending)} waiting); retry after the Retry-After seconds.",
                    retry_after=1.0,
                )
            for s in seqs:
                s.generator = torch.Generator(device="cpu")
                s.generator.manual_seed(s.seed if s.seed is not None else random.getrandbits(63))
                self._pending.append(s)
            self._wake.notify()

    def call(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run ``fn`` on the worker thread between two decode steps (model changes go through here)."""
        fut: Future = Future()
        self._jobs.put((fn, fut))
        with self._wake:
            self._wake.notify()
        return fut.result(timeout)

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=10)

    # -- the worker ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._pending and not self._active and self._jobs.empty():
                    self._wake.wait()
                if self._stopping:
                    break
                room = self.max_batch_size - len(self._active)
                admitted = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            self._run_jobs()
            try:
                with torch.inference_mode():
                    admitted = [s for s in admitted if not self._drop_if_cancelled(s)]
                    if admitted:
                        self._prefill(admitted)
                    elif self._active:
                        self._decode()
                    self._retire()
            except Exception as exc:  # a failed step fails the rows in it, never the engine
                log.exception("decode step failed")
                for s in dict.fromkeys(self._active + admitted):
                    s.emit(
                        Event(
                            finish="error",
                            error=exc,
                            prompt_tokens=len(s.prompt_ids),
                            completion_tokens=len(s.generated),
                        )
                    )
                    s.emit = _ignore
                self._reset()
        for s in list(self._active) + list(self._pending):
            s.emit(
                Event(finish="cancelled", prompt_tokens=len(s.prompt_ids), completion_tokens=len(s.generated))
            )

    def _run_jobs(self) -> None:
        while True:
            try:
                fn, fut = self._jobs.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the caller
                fut.set_exception(exc)

    def _drop_if_cancelled(self, s: Sequence) -> bool:
        if s.cancelled:
            s.emit(Event(finish="cancelled", prompt_tokens=len(s.prompt_ids)))
        return s.cancelled

    def _reset(self) -> None:
        self._active, self._cache, self._mask, self._positions, self._last = [], None, None, None, None

    def _forward(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        adapters: list[str | None],
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if hasattr(self.model, "peft_config"):
            names = set(adapters)
            if len(names) == 1 and None not in names:
                # one adapter for every row: peft's plain path, cheaper than its per-row mixed path
                (name,) = names
                if self.model.active_adapter != name:
                    self.model.set_adapter(name, inference_mode=True)
            else:
                kwargs["adapter_names"] = [a or BASE_ADAPTER for a in adapters]
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        return out.logits[:, -1, :]

    def _prefill(self, seqs: list[Sequence]) -> None:
        from transformers import DynamicCache

        width = max(len(s.prompt_ids) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # left padding: every row's last prompt token sits in the last column
            ids[i, width - len(s.prompt_ids) :] = torch.tensor(s.prompt_ids)
            mask[i, width - len(s.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, positions, cache, [s.adapter for s in seqs])
        next_pos = mask.sum(-1)
        self._merge(seqs, cache, mask, next_pos)
        self._accept(seqs, logits)

    def _merge(self, seqs: list[Sequence], cache: Any, mask: torch.Tensor, next_pos: torch.Tensor) -> None:
        if not self._active:
            self._active, self._cache, self._mask, self._positions, self._last = (
                list(seqs),
                cache,
                mask,
                next_pos,
                None,
            )
            return
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)

        def pad(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
            if n == 0:
                return t
            shape = list(t.shape)
            shape[dim] = n
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for old, new in zip(self._cache.layers, cache.layers):
            old.keys = torch.cat(
                [pad(old.keys, width - old_len, -2), pad(new.keys, width - new_len, -2)], dim=0
            )
            old.values = torch.cat(
                [pad(old.values, width - old_len, -2), pad(new.values, width - new_len, -2)], dim=0
            )
        self._mask = torch.cat([pad(self._mask, width - old_len, 1), pad(mask, width - new_len, 1)], dim=0)
        self._positions = torch.cat([self._positions, next_pos], dim=0)
        self._active.extend(seqs)

    def _decode(self) -> None:
        assert self._last is not None and self._mask is not None and self._positions is not None
        self._mask = torch.cat([self._mask, self._mask.new_ones((self._mask.shape[0], 1))], dim=1)
        logits = self._forward(
            self._last[:, None],
            self._mask,
            self._positions[:, None],
            self._cache,
            [s.adapter for s in self._active],
        )
        self._positions = self._positions + 1
        self._accept(self._active, logits)

    def _accept(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        tokens = self._sample(seqs, logits)
        # the sampled tokens are these rows' next input; prefilled rows were appended at the end
        if seqs is self._active or self._last is None:
            self._last = tokens.to(self.device)
        else:
            self._last = torch.cat([self._last, tokens.to(self.device)])
        for s, tok in zip(seqs, tokens.tolist()):
            self._step(s, tok)

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        tokens = logits.argmax(-1).cpu()
        for i, s in enumerate(seqs):
            if s.temperature <= 0:
                continue
            row = logits[i] / s.temperature
            probs = torch.softmax(row, -1)
            if s.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                keep = sorted_p.cumsum(-1) - sorted_p < s.top_p  # always keeps the most likely token
                sorted_p = sorted_p * keep
                probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
            tokens[i] = torch.multinomial(probs.cpu(), 1, generator=s.generator)[0]
        return tokens

    def _step(self, s: Sequence, tok: int) -> None:
        if tok in self.eos_ids:
            self._finish(s, "stop")
            return
        s.generated.append(tok)
        self._detokenize(s)
        if s.cancelled:  # a stop string was met
            return
        if len(s.generated) >= s.max_new_tokens:
            self._finish(s, "length")

    def _detokenize(self, s: Sequence) -> None:
        # Decode a sliding window so each token costs the same however long the answer is; hold
        # back text ending in U+FFFD (a UTF-8 character split across tokens).
        decode = self.tokenizer.decode
        prefix = decode(s.generated[s._prefix_offset : s._read_offset], skip_special_tokens=True)
        full = decode(s.generated[s._prefix_offset :], skip_special_tokens=True)
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return
        s.text += full[len(prefix) :]
        s._prefix_offset, s._read_offset = s._read_offset, len(s.generated)
        if s.stop:
            start = max(0, s.sent - max(len(x) for x in s.stop))
            hits = [i for i in (s.text.find(x, start) for x in s.stop) if i >= 0]
            if hits:
                s.text = s.text[: min(hits)]
                self._finish(s, "stop")
                return
            # hold back what could still become a stop string
            safe = len(s.text) - (max(len(x) for x in s.stop) - 1)
        else:
            safe = len(s.text)
        if safe > s.sent:
            s.emit(Event(text=s.text[s.sent : safe]))
            s.sent = safe

    def _finish(self, s: Sequence, reason: str) -> None:
        # text held back waiting for the rest of a UTF-8 character: nothing more is coming (after a
        # stop string the window is already empty, so the cut text stays cut)
        decode = self.tokenizer.decode
        prefix = decode(s.generated[s._prefix_offset : s._read_offset], skip_special_tokens=True)
        full = decode(s.generated[s._prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix):
            s.text += full[len(prefix) :]
        s._prefix_offset = s._read_offset = len(s.generated)
        if s.sent < len(s.text):
            s.emit(Event(text=s.text[s.sent :]))
            s.sent = len(s.text)
        s.cancelled = True  # leaves the batch in _retire
        s.emit(Event(finish=reason, prompt_tokens=len(s.prompt_ids), completion_tokens=len(s.generated)))
        s.emit = _ignore  # anything after the end is dropped

    def _retire(self) -> None:
        keep = [i for i, s in enumerate(self._active) if not s.cancelled]
        gone = [s for s in self._active if s.cancelled]
        for s in gone:  # cancelled by the caller (a disconnect): report it once
            s.emit(
                Event(finish="cancelled", prompt_tokens=len(s.prompt_ids), completion_tokens=len(s.generated))
            )
        if not gone:
            return
        if not keep:
            self._reset()
            return
        idx = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(idx)
        self._mask = self._mask.index_select(0, idx)
        self._positions = self._positions.index_select(0, idx)
        self._last = self._last.index_select(0, idx)
        self._active = [self._active[i] for i in keep]
        # drop the columns only departed rows needed (long prompts that finished)
        used = self._mask.any(0).nonzero()
        first = int(used[0]) if len(used) else 0
        if first > 0:
            self._mask = self._mask[:, first:]
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, first:]
                layer.values = layer.values[:, :, first:]


def _ignore(_: Event) -> None:
    return None
