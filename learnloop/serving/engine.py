"""Continuous batching over one base model and any number of LoRA adapters, in-process.

Why not transformers' own continuous batching (``generate_batch`` / ``init_continuous_batching``)?
It packs every request into one flat token stream over a paged cache and applies one set of
weights to all of it, so a request cannot name its adapter. So this engine keeps rows:

- one worker thread owns the model: every forward pass, adapter load and unload happens there,
  between decode steps, so loading a new version never races a running batch;
- new requests join the running batch at the next step (on the decoder their prompts go through
  the same pass over the weights as the running rows' next tokens), finished or cancelled rows
  leave it at once;
- each row carries its own adapter name, sampling settings and seeded generator, so the result of
  a request does not depend on what it was batched with (greedy output equals ``generate``);
- rows marked ``background`` (evaluation) take slots of their own: a request never waits for an
  evaluation's rows, it only shares the steps with them.

Two runners do the model's arithmetic. On a CPU, for Llama-family models, ``decoder.LlamaDecoder``
(reordered weights, a slot per row in a preallocated cache, LoRA per row, the one adapter in use
folded into the weights); everywhere else transformers' forward with peft, rows left-padded into
one ``DynamicCache``. If the decoder fails (a step, a merge, an adapter it cannot apply), the
engine logs a warning, moves to transformers' forward for good and carries on: the rows in
flight are prefilled again from their prompt and the tokens they already have.

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
from pathlib import Path
from typing import Any

import torch

from learnloop.errors import Conflict, Overloaded

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
    # False: the text comes in one event at the end (no per-token detokenizing unless stop strings need it)
    stream: bool = True
    background: bool = False  # evaluation's rows: their own slots, admitted after requests
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

    def context(self) -> list[int]:
        """Every token the model has seen or produced for this row (what a fresh prefill starts from)."""
        return self.prompt_ids + self.generated


class BatchEngine:
    """Owns the model on one worker thread and decodes all active sequences together.

    ``max_batch_size`` rows answer requests; up to ``background_slots`` more rows answer background
    work (evaluation) beside them. ``decoder``: use ``decoder.LlamaDecoder`` where it applies
    (``merge_after``: steps with one adapter in every row before it is folded into the weights; 0 never).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch_size: int = 8,
        max_queued: int = 64,
        background_slots: int | None = None,
        decoder: bool = True,
        merge_after: int = 64,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.background_slots = max_batch_size if background_slots is None else background_slots
        self.max_queued = max_queued
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = eos_ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
        self.adapters: dict[str, Path] = {}
        self.runner: Any = self._pick_runner(decoder, merge_after)
        self._pending: deque[Sequence] = deque()
        self._background: deque[Sequence] = deque()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        self._wake = threading.Condition()
        self._active: list[Sequence] = []
        self._last: torch.Tensor | None = None  # each active row's latest token: its next input
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="learnloop-serving-engine", daemon=True)
        self._thread.start()

    def _pick_runner(self, want_decoder: bool, merge_after: int) -> Any:
        if want_decoder:
            from learnloop.serving import decoder

            why = decoder.supports(self.model)
            if why is None:
                try:
                    runner = _DecoderRunner(
                        decoder.LlamaDecoder(self.model, slots=self.max_batch_size + self.background_slots),
                        merge_after,
                    )
                    _check_against_transformers(runner, self.model)
                    return runner
                except Exception as exc:  # never serve from a decoder that disagrees with the model
                    log.warning("serving with transformers' forward: the decoder failed its check (%s)", exc)
            else:
                log.info("serving with transformers' forward: %s", why)
        return _TransformersRunner(self.model, self.pad_id, self.device)

    # -- the caller's side ------------------------------------------------------------------

    @property
    def load(self) -> tuple[int, int]:
        """(sequences decoding, sequences waiting)."""
        return len(self._active), len(self._pending) + len(self._background)

    @property
    def runner_name(self) -> str:
        """'decoder' or 'transformers': which forward the steps run."""
        return self.runner.name

    def submit(self, seqs: list[Sequence]) -> None:
        """Queue sequences for decoding; past the queue bound raise Overloaded (nothing is queued).

        Background sequences are not bounded here: their caller (an evaluation) bounds them itself.
        """
        with self._wake:
            front = [s for s in seqs if not s.background]
            busy = sum(not s.background for s in self._active)
            free = max(0, self.max_batch_size - busy - len(self._pending))
            if front and len(self._pending) + len(front) - free > self.max_queued:
                raise Overloaded(
                    f"The model is busy ({len(self._active)} sequences decoding, "
                    f"{len(self._pending)} waiting); retry after the Retry-After seconds.",
                    retry_after=1.0,
                )
            for s in seqs:
                s.generator = torch.Generator(device="cpu")
                s.generator.manual_seed(s.seed if s.seed is not None else random.getrandbits(63))
                (self._background if s.background else self._pending).append(s)
            self._wake.notify()

    def call(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run ``fn`` on the worker thread between two decode steps (model changes go through here)."""
        fut: Future = Future()
        self._jobs.put((fn, fut))
        with self._wake:
            self._wake.notify()
        return fut.result(timeout)

    def load_adapter(self, name: str, path: Path) -> None:
        """Load the LoRA at ``path`` as ``name`` (on the worker, between steps)."""

        def load() -> None:
            try:
                self.runner.load_adapter(name, path)
            except Exception as exc:
                if self.runner.name != "decoder":
                    raise
                self._fall_back(f"adapter {name} at {path}: {exc}")
                self.runner.load_adapter(name, path)
            self.adapters[name] = path

        self.call(load)

    def unload_adapter(self, name: str) -> None:
        """Forget adapter ``name``; Conflict while rows still use it."""

        def unload() -> None:
            if any(s.adapter == name for s in [*self._active, *self._pending, *self._background]):
                raise Conflict(f"Adapter {name!r} is answering requests; unload it once they finish.")
            self.runner.unload_adapter(name, last=len(self.adapters) == 1)
            del self.adapters[name]

        self.call(unload)

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=10)

    # -- the worker ---------------------------------------------------------------------------

    def _admit(self) -> list[Sequence]:
        """Take waiting rows into free slots: requests first, then background rows into theirs."""
        busy = sum(not s.background for s in self._active)
        take = min(self.max_batch_size - busy, len(self._pending))
        admitted = [self._pending.popleft() for _ in range(take)]
        take = min(self.background_slots - (len(self._active) - busy), len(self._background))
        if busy or admitted:
            # a prompt makes its step longer for every row in it: with requests decoding, background
            # rows join one per step, so a batch of them never holds the requests' next token for long
            take = min(take, 1)
        admitted += [self._background.popleft() for _ in range(take)]
        return admitted

    def _run(self) -> None:
        while True:
            with self._wake:
                while (
                    not self._stopping
                    and not self._pending
                    and not self._background
                    and not self._active
                    and self._jobs.empty()
                ):
                    self._wake.wait()
                if self._stopping:
                    break
                admitted = self._admit()
            self._run_jobs()
            try:
                with torch.inference_mode():
                    admitted = [s for s in admitted if not self._drop_if_cancelled(s)]
                    self._step(admitted)
            except Exception as exc:
                if self.runner.name == "decoder" and self._fell_back(exc):
                    # the rows are kept: they start again on transformers' forward from what they have
                    with self._wake:
                        for s in reversed(list(dict.fromkeys(self._active + admitted))):
                            (self._background if s.background else self._pending).appendleft(s)
                    self._active, self._last = [], None
                    continue
                log.exception("decode step failed")  # a failed step fails the rows in it, never the engine
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
        for s in list(self._active) + list(self._pending) + list(self._background):
            s.emit(
                Event(finish="cancelled", prompt_tokens=len(s.prompt_ids), completion_tokens=len(s.generated))
            )

    def _step(self, admitted: list[Sequence]) -> None:
        if admitted or self._active:
            self.runner.prepare({s.adapter for s in self._active + admitted})
            rows, logits = self.runner.step(self._active, self._last, admitted)
            self._active = self._active + admitted
            self._accept(rows, logits)
        self._retire()

    def _fell_back(self, exc: Exception) -> bool:
        """After a failed decoder step: move to transformers' forward; False if that failed too."""
        try:
            self._fall_back(f"a step failed: {exc!r}", log_exc=True)
        except Exception:
            log.exception("transformers' forward could not take over")
            return False
        return True

    def _fall_back(self, why: str, *, log_exc: bool = False) -> None:
        log.warning(
            "the decoder failed (%s); serving with transformers' forward from now on", why, exc_info=log_exc
        )
        runner = _TransformersRunner(self.model, self.pad_id, self.device)
        for name, path in self.adapters.items():
            runner.load_adapter(name, path)
        self.runner = runner

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
        self._active, self._last = [], None
        self.runner.reset()

    def _accept(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        tokens = self._sample(seqs, logits)
        # the sampled tokens are these rows' next input: every row's, or (a prefill alone) the new rows'
        if len(seqs) == len(self._active) or self._last is None:
            self._last = tokens
        else:
            self._last = torch.cat([self._last, tokens])
        for s, tok in zip(seqs, tokens.tolist()):
            self._take(s, tok)

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

    def _take(self, s: Sequence, tok: int) -> None:
        if tok in self.eos_ids:
            self._finish(s, "stop")
            return
        s.generated.append(tok)
        if s.stream or s.stop:
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
        if s.stream and safe > s.sent:
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
        gone = [i for i, s in enumerate(self._active) if s.cancelled]
        if not gone:
            return
        for i in gone:  # cancelled by the caller (a disconnect): report it once
            s = self._active[i]
            s.emit(
                Event(finish="cancelled", prompt_tokens=len(s.prompt_ids), completion_tokens=len(s.generated))
            )
        if len(gone) == len(self._active):
            self._reset()
            return
        # The rows that stay keep their places; rows past the new end move into the holes (fewest moves).
        n = len(self._active) - len(gone)
        order = list(range(n))
        movers = [i for i in range(n, len(self._active)) if not self._active[i].cancelled]
        for hole, src in zip((i for i in gone if i < n), movers):
            order[hole] = src
        self.runner.keep(order, [self._active[i] for i in order])
        assert self._last is not None
        self._last = self._last[order]
        self._active = [self._active[i] for i in order]


class _TransformersRunner:
    """transformers' forward (+ peft for adapters): rows left-padded into one ``DynamicCache``."""

    name = "transformers"

    def __init__(self, model: Any, pad_id: int, device: torch.device) -> None:
        self.model = model
        self.pad_id = pad_id
        self.device = device
        self.reset()

    def reset(self) -> None:
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None

    def prepare(self, adapters: set[str | None]) -> None:
        return None

    def load_adapter(self, name: str, path: Path) -> None:
        from peft import PeftModel

        if hasattr(self.model, "peft_config"):
            self.model.load_adapter(str(path), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
        self.model.eval()

    def unload_adapter(self, name: str, *, last: bool) -> None:
        if last:
            self.model = self.model.unload()  # the last one: back to the plain base model
        else:
            self.model.delete_adapter(name)

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

    def step(
        self, active: list[Sequence], last: torch.Tensor | None, admitted: list[Sequence]
    ) -> tuple[list[Sequence], torch.Tensor]:
        """New rows are prefilled in a step of their own (the running rows wait one step)."""
        if admitted:
            return admitted, self.prefill(admitted)
        assert last is not None
        return active, self.decode(active, last)

    def prefill(self, seqs: list[Sequence]) -> torch.Tensor:
        from transformers import DynamicCache

        contexts = [s.context() for s in seqs]
        width = max(len(c) for c in contexts)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, c in enumerate(contexts):  # left padding: every row's last token sits in the last column
            ids[i, width - len(c) :] = torch.tensor(c)
            mask[i, width - len(c) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, positions, cache, [s.adapter for s in seqs])
        self._merge(cache, mask, mask.sum(-1))
        return logits

    def _merge(self, cache: Any, mask: torch.Tensor, next_pos: torch.Tensor) -> None:
        if self._cache is None:
            self._cache, self._mask, self._positions = cache, mask, next_pos
            return
        assert self._mask is not None and self._positions is not None
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

    def decode(self, seqs: list[Sequence], tokens: torch.Tensor) -> torch.Tensor:
        assert self._mask is not None and self._positions is not None
        self._mask = torch.cat([self._mask, self._mask.new_ones((self._mask.shape[0], 1))], dim=1)
        logits = self._forward(
            tokens.to(self.device)[:, None],
            self._mask,
            self._positions[:, None],
            self._cache,
            [s.adapter for s in seqs],
        )
        self._positions = self._positions + 1
        return logits

    def keep(self, order: list[int], seqs: list[Sequence]) -> None:
        assert self._mask is not None and self._positions is not None
        idx = torch.tensor(order, device=self.device)
        self._cache.batch_select_indices(idx)
        self._mask = self._mask.index_select(0, idx)
        self._positions = self._positions.index_select(0, idx)
        # drop the columns only departed rows needed (long prompts that finished)
        used = self._mask.any(0).nonzero()
        first = int(used[0]) if len(used) else 0
        if first > 0:
            self._mask = self._mask[:, first:]
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, first:]
                layer.values = layer.values[:, :, first:]


class _DecoderRunner:
    """``decoder.LlamaDecoder``: row i of the batch lives in slot i of its cache."""

    name = "decoder"

    def __init__(self, decoder: Any, merge_after: int) -> None:
        self.decoder = decoder
        self.merge_after = merge_after
        self._streak: tuple[str | None, int] = (None, 0)  # the adapter alone in the last steps, and how many

    def reset(self) -> None:
        return None

    def load_adapter(self, name: str, path: Path) -> None:
        self.decoder.add_adapter(name, path)

    def unload_adapter(self, name: str, *, last: bool) -> None:
        self.decoder.remove_adapter(name)

    def prepare(self, adapters: set[str | None]) -> None:
        """Fold the adapter into the weights once it has been alone for ``merge_after`` steps; take it
        out before any step with another model in it (rows of the base stay exact)."""
        dec = self.decoder
        alone = next(iter(adapters)) if len(adapters) == 1 else None
        if dec.merged is not None and alone != dec.merged:
            dec.merge(None)
        if alone is None or self.merge_after <= 0 or alone == dec.merged:
            self._streak = (None, 0)
            return
        name, steps = self._streak
        steps = steps + 1 if name == alone else 1
        self._streak = (alone, steps)
        if steps >= self.merge_after:
            dec.merge(alone)

    def step(
        self, active: list[Sequence], last: torch.Tensor | None, admitted: list[Sequence]
    ) -> tuple[list[Sequence], torch.Tensor]:
        """The running rows' next token and the new rows' prompts in one pass over the weights."""
        if active:
            assert last is not None
            positions = torch.tensor([len(s.prompt_ids) + len(s.generated) - 1 for s in active])
        else:
            last = positions = torch.zeros(0, dtype=torch.long)
        logits = self.decoder.step(
            last,
            positions,
            [s.adapter for s in active],
            [s.context() for s in admitted],
            [s.adapter for s in admitted],
        )
        return active + admitted, logits

    def keep(self, order: list[int], seqs: list[Sequence]) -> None:
        for dst, (src, s) in enumerate(zip(order, seqs)):
            if src != dst:
                self.decoder.cache.move(src, dst, len(s.prompt_ids) + len(s.generated))


def _check_against_transformers(runner: _DecoderRunner, model: Any) -> None:
    """The decoder's next-token logits for a short prompt, prefilled and decoded, must agree with
    transformers' forward (same argmax, close values); raises when they do not."""
    ids = [1 + (i * 37) % max(2, model.config.vocab_size - 1) for i in range(12)]
    with torch.inference_mode():
        want = model(input_ids=torch.tensor([ids])).logits[0, -2:]
        got_prefill = runner.decoder.prefill([ids[:-1]], [None])[0]
        got_decode = runner.decoder.decode(torch.tensor(ids[-1:]), torch.tensor([len(ids) - 1]), [None])[0]
    exact = want.dtype == torch.float32
    for got, ref in ((got_prefill, want[0]), (got_decode, want[1])):
        # fp32: the same arithmetic in another order; lower precision: its rounding, in another order
        tol = (1e-3 if exact else 5e-2) * float(ref.abs().max()) + 1e-4
        diff = float((got.float() - ref.float()).abs().max())
        if diff > tol or (exact and int(got.argmax()) != int(ref.argmax())):
            raise RuntimeError(f"logits differ from transformers' by {diff:.2e} (allowed {tol:.2e})")


def _ignore(_: Event) -> None:
    return None
