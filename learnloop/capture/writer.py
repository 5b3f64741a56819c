"""The background writer: the app thread only appends to a queue; three threads do the rest.

* the **spooler** drains the queue into batches (``batch_size`` records, or whatever arrived
  within ``flush_interval``), serializes each batch once, and writes it to the spool with one
  fsync (write-ahead);
* the **preparer** works ahead of the sender on the next ``LOOKAHEAD`` batches: it validates
  each from its JSON body (records that can never be stored go to ``rejected/``) and lets the
  transport prepare it (the database transport plans the insert). It prepares one batch each
  time the sender starts its longest wait on the store (the insert, the HTTP request), so its
  Python work runs while the sender does not need the GIL. Run at any other time, it held the
  GIL when the sender came back from a short call and the sender waited out the interpreter's
  switch interval (5 ms) for it: the overlap gained nothing (measured);
* the **sender** delivers the batches strictly in order through the transport (preparing
  itself any batch the preparer has not reached); each file is deleted once the store
  acknowledged it (by the spooler, off the sender's path, and at the latest before ``flush()``
  returns or ``close()`` ends). While the store is unreachable the sender backs off
  (exponential, or the server's Retry-After) and the spooler keeps moving records to disk.

Order matters because late feedback must reach the store after its trajectory: a batch is never
sent before an older one has been delivered.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from learnloop.capture.encoding import dumps, loads  # dumps re-exported: tests and tools use writer.dumps
from learnloop.capture.spool import Spool
from learnloop.capture.transports import PreparedBatch, Refused, RetryLater, Transport

log = logging.getLogger("learnloop.capture")

# Batches prepared ahead of the one being sent. Two keep the sender fed (preparing a batch
# takes less time than writing it) while few prepared records are held in memory.
LOOKAHEAD = 2

# Queue items are (kind, record) with kind one of these; the record is the wire-format dict,
# already serialized to JSON by the thread that submitted it.
TRAJECTORY, FEEDBACK, SCORE = "trajectories", "feedback", "scores"
_KINDS = (TRAJECTORY, FEEDBACK, SCORE)


class BackgroundWriter:
    """Batches records in the background and delivers them through ``transport``, spooling first."""

    def __init__(
        self,
        transport: Transport,
        spool: Spool,
        *,
        batch_size: int = 256,
        flush_interval: float = 0.5,
        queue_size: int = 100_000,
        max_backoff: float = 30.0,
    ) -> None:
        self.transport = transport
        self.spool = spool
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.queue_size = queue_size
        self.max_backoff = max_backoff

        self._queue: deque[tuple[str, bytes]] = deque()
        self._wake = threading.Event()
        self._cond = threading.Condition()
        self._pending: deque[tuple[Path, PreparedBatch | None]] = deque()
        # Files of batches the store has acknowledged, removed by the spooler rather than the
        # sender: an unlink of a just-fsynced file costs milliseconds on ext4, and the sender's
        # time is the pipeline's bottleneck. A file still here when the process dies is
        # redelivered at the next start, a no-op for the store.
        self._delivered: deque[Path] = deque()
        self._spooling = 0  # threads moving records from the queue to the spool right now
        self._spool_lock = threading.Lock()
        self._records_in_memory = 0
        self._closing = False
        self._stop_sender = False
        self._kick = False
        self._retry_at = 0.0
        self._server_said_wait = False  # a Retry-After from the server is honoured even by flush()
        self._failures = 0
        self._closed = False
        self.counters = {"delivered": 0, "rejected": 0, "retries": 0, "overflowed": 0}
        self.last_error: str | None = None

        for path in spool.adopt_orphans():
            self._pending.append((path, None))
        if self._pending:
            log.info("learnloop capture: redelivering %d spooled batch(es) from an earlier run", len(self._pending))

        self._spooler = threading.Thread(target=self._spool_loop, name="learnloop-capture-spooler", daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name="learnloop-capture-sender", daemon=True)
        self._prepare_next = threading.Event()  # set by the sender when it starts waiting on the store
        self._preparer = threading.Thread(target=self._prepare_loop, name="learnloop-capture-preparer", daemon=True)
        self._spooler.start()
        self._sender.start()
        self._preparer.start()

    # -- app thread -----------------------------------------------------------------------

    def submit(self, kind: str, record: dict[str, Any]) -> None:
        """Enqueue one record. Never blocks on the network; a full queue spills to disk.

        The record is serialized here, on the caller's thread (~1 µs with orjson): the queue
        then holds bytes, which Python's cyclic garbage collector never traverses (a burst of
        queued dicts made full collections the writer's largest cost), what is stored is the
        record as it was when recorded (later changes to its dicts by the app do not leak in),
        and a record that cannot be encoded fails at the line that recorded it instead of
        blocking the queue.
        """
        q = self._queue
        q.append((kind, dumps(record)))
        n = len(q)
        if n >= self.batch_size or self._closed:
            if n > self.queue_size or self._closed:
                # Full (the writer cannot keep up) or closed: this thread moves the queue to the
                # spool itself, oldest first, so late feedback still lands after its trajectory.
                if not self._closed:
                    self.counters["overflowed"] += 1
                self._drain()
            else:
                self._wake.set()

    # -- spooler --------------------------------------------------------------------------

    def _spool_loop(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self._drain()
            except Exception:  # a full disk, say: keep the records queued and try again
                log.exception("learnloop capture: could not write to the spool %s", self.spool.root)
                time.sleep(min(self.flush_interval, 1.0))
            self._remove_delivered()
            if self._closing and not self._queue:
                return

    def _drain(self) -> None:
        """Move the whole queue to the spool in order. Called by the spooler, or by an app thread
        when the queue overflows; the lock keeps batches in queue order between them."""
        q = self._queue
        if not q:
            return
        with self._cond:
            self._spooling += 1
        try:
            while q:
                with self._spool_lock:
                    n = min(len(q), self.batch_size)
                    items = [q.popleft() for _ in range(n)]
                    try:
                        self._write_batches(items)
                    except BaseException:
                        q.extendleft(reversed(items))  # not on disk: back to the head of the queue
                        raise
        finally:
            with self._cond:
                self._spooling -= 1
                self._cond.notify_all()

    def _write_batches(self, items: list[tuple[str, bytes]]) -> None:
        prepared = self._join(items)
        path = self.spool.write(prepared.body)
        with self._cond:
            # Serialized batches stay in memory beside their file (so they are not read back)
            # within the queue_size budget; past it the sender re-reads them from disk, so a long
            # outage costs disk, not memory.
            if self._records_in_memory + prepared.count <= self.queue_size:
                self._records_in_memory += prepared.count
                self._pending.append((path, prepared))
            else:
                self._pending.append((path, None))
            self._cond.notify_all()

    @staticmethod
    def _join(items: list[tuple[str, bytes]]) -> PreparedBatch:
        """The batch's JSON body (as spooled and sent), joined from the records' own JSON.

        Validation waits until the batch is among the next ``LOOKAHEAD`` to send (``_prepare``):
        the parsed records then live for a few batches, not for every batch queued behind a busy
        store. Holding tens of thousands of parsed records made Python's cyclic garbage
        collector the writer's largest cost (measured: ~0.4 s of each 10,000-record burst).
        """
        grouped: dict[str, list[bytes]] = {k: [] for k in _KINDS}
        for kind, raw in items:
            grouped[kind].append(raw)
        body = b"{" + b",".join(b'"%s":[%s]' % (kind.encode(), b",".join(raws)) for kind, raws in grouped.items()) + b"}"
        return PreparedBatch(body=body, count=len(items))

    def _validated(self, prepared: PreparedBatch) -> PreparedBatch | None:
        """The batch with its records, validated once from its JSON body (exactly what is spooled
        and stored). Records that can never be stored go to ``rejected/`` and the rest form the
        batch; None when nothing is left. A body is rebuilt from what is kept, with the encoder
        of ``submit`` (so a lone surrogate escaped in the file becomes U+FFFD, as when recorded)."""
        from learnloop.store.records import batch_from_json

        if prepared.batch is not None:
            return prepared
        try:
            prepared.batch = batch_from_json(prepared.body)
            return prepared
        except ValidationError:
            pass
        try:
            grouped = loads(prepared.body)
        except ValueError:
            try:  # the standard parser also takes what orjson refuses (a lone surrogate's escape)
                grouped = json.loads(prepared.body)
            except ValueError:
                grouped = None
        if not isinstance(grouped, dict):  # not a batch at all (a corrupted file): keep it aside whole
            self._rejected()
            self.spool.reject("batch", prepared.body.decode("utf-8", "replace"), "not a JSON ingest batch")
            return None
        kept = self._drop_invalid(grouped)
        if not any(kept.values()):
            return None
        body = dumps(kept)
        return PreparedBatch(body=body, batch=batch_from_json(body), count=sum(len(v) for v in kept.values()))

    def _drop_invalid(self, grouped: dict[str, Any]) -> dict[str, list[Any]]:
        from learnloop.store.records import batch_from_json, format_validation_error

        kept: dict[str, list[Any]] = {k: [] for k in _KINDS}
        unknown = set(grouped) - set(_KINDS)
        for kind in unknown:
            self._rejected()
            self.spool.reject(str(kind), grouped[kind], f"unknown part {kind!r} of an ingest batch")
        for kind in _KINDS:
            records = grouped.get(kind) or []
            if not isinstance(records, list):
                records = [records]
            for record in records:
                raw = dumps({kind: [record]})
                try:
                    batch_from_json(raw)
                except ValidationError as exc:
                    reason = "; ".join(f"{loc}: {msg}" for loc, msg in format_validation_error(exc))
                    self._rejected()
                    self.spool.reject(kind, record, reason)
                    continue
                kept[kind].append(record)
        return kept

    # -- sender ---------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stop_sender:
                        return
                    if self._pending:
                        delay = self._retry_at - time.monotonic()
                        if delay <= 0 or (self._kick and not self._server_said_wait):
                            self._kick = False
                            break
                        self._cond.wait(delay)
                    else:
                        self._cond.wait()
                path, prepared = self._pending[0]
            try:
                self._deliver(path, prepared)
            except RetryLater as exc:
                self._back_off(exc)
            except Exception as exc:  # unexpected: keep the batch and retry with backoff
                log.exception("learnloop capture: delivering %s failed", path.name)
                self._back_off(RetryLater(f"{type(exc).__name__}: {exc}"))
            else:
                with self._cond:
                    self._failures = 0
                    self._retry_at = 0.0
                    self._server_said_wait = False
                    _, done = self._pending.popleft()
                    if done is not None:
                        self._records_in_memory -= done.count
                    self._cond.notify_all()

    def _deliver(self, path: Path, prepared: PreparedBatch | None) -> None:
        if prepared is None:
            try:
                body = self.spool.read(path)
            except FileNotFoundError:
                return
            if body is None:
                log.warning("learnloop capture: %s was cut short by a crash before it was sent; removing it", path.name)
                self.spool.remove(path)
                return
            prepared = PreparedBatch(body=body)
        else:
            with self._cond:
                while prepared.busy:  # the preparer is on it: waiting is quicker than doing it again
                    self._cond.wait()
                prepared.busy = True
        try:
            self._prepare(prepared)  # once: a batch retried after RetryLater keeps what was prepared
        finally:
            with self._cond:
                prepared.busy = False
        count = 0
        validated = prepared.valid
        if validated is not None:
            try:
                self.transport.send(validated, while_blocked=self._prepare_next.set)
            except Refused as exc:
                self._isolate(validated, str(exc))
            count = validated.count or _count(validated.body)
        self._delivered.append(path)
        self.counters["delivered"] += count
        if self._failures:
            log.info("learnloop capture: %s reachable again; delivered a spooled batch", self.transport.name)

    def _rejected(self) -> None:
        with self._cond:  # the preparer and the sender both reject records
            self.counters["rejected"] += 1

    # -- preparer -------------------------------------------------------------------------

    def _prepare(self, prepared: PreparedBatch) -> None:
        if prepared.checked:
            return
        valid = self._validated(prepared)
        if valid is not None:
            try:
                self.transport.prepare(valid)
            except Exception:  # send() prepares what is missing and reports the error where it is handled
                log.debug("learnloop capture: preparing a batch failed; the sender will retry it", exc_info=True)
            # The parsed records are not kept: what the transport needs is in its plan or the
            # body, and thousands of dicts waiting their turn made garbage collections costly.
            valid.batch = None
        prepared.valid = valid
        prepared.checked = True

    def _next_to_prepare(self) -> PreparedBatch | None:
        for i, (_, prepared) in enumerate(self._pending):
            if i > LOOKAHEAD:
                return None
            if prepared is not None and not prepared.checked and not prepared.busy and not prepared.ahead_failed:
                return prepared
        return None

    def _prepare_loop(self) -> None:
        while True:
            self._prepare_next.wait()
            self._prepare_next.clear()
            with self._cond:
                if self._stop_sender:
                    return
                prepared = self._next_to_prepare()
                if prepared is None:
                    continue
                prepared.busy = True
            try:
                self._prepare(prepared)
            except Exception:  # the sender prepares it again and handles the error
                log.debug("learnloop capture: preparing a batch failed", exc_info=True)
                prepared.ahead_failed = True
            finally:
                with self._cond:
                    prepared.busy = False
                    self._cond.notify_all()

    def _isolate(self, prepared: PreparedBatch, reason: str) -> None:
        """The store refused a batch: send its records one by one and keep the refused ones aside.

        A RetryLater part-way leaves the whole batch spooled; resending the singles already
        delivered is a no-op for the store.
        """
        grouped = json.loads(prepared.body)
        log.warning("learnloop capture: the store refused a batch (%s); sending its records one by one", reason)
        for kind in _KINDS:
            for record in grouped.get(kind) or []:
                single = dumps({kind: [record]})
                try:
                    self.transport.send(PreparedBatch(body=single, count=1))
                except Refused as exc:
                    self._rejected()
                    self.spool.reject(kind, record, str(exc))

    def _back_off(self, exc: RetryLater) -> None:
        with self._cond:
            self._failures += 1
            self.counters["retries"] += 1
            delay = exc.retry_after
            self._server_said_wait = delay is not None
            if delay is None:
                delay = min(self.max_backoff, 0.25 * 2 ** min(self._failures, 16)) * random.uniform(0.5, 1.0)
            self._retry_at = time.monotonic() + delay
            self.last_error = str(exc)
        if self._failures == 1 or self._failures % 20 == 0:
            log.warning(
                "learnloop capture: cannot deliver to the %s (%s); records are spooled in %s, retrying in %.1fs",
                self.transport.name, exc, self.spool.root, delay,
            )

    # -- control --------------------------------------------------------------------------

    def _remove_delivered(self) -> None:
        delivered = self._delivered
        while delivered:
            try:
                path = delivered.popleft()
            except IndexError:  # taken by another thread meanwhile
                return
            self.spool.remove(path)

    def _idle(self) -> bool:
        return not self._queue and not self._spooling and not self._pending

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver everything recorded so far; True when it all reached the store within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wake.set()
        with self._cond:
            self._kick = True
            self._cond.notify_all()
            while not self._idle():
                if self._queue and not self._spooling:
                    self._wake.set()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.05 if remaining is None else min(0.05, remaining))
        self._remove_delivered()  # so that a flushed spool holds no delivered batch
        return True

    def close(self, timeout: float = 5.0) -> bool:
        """Stop: spool whatever is queued, try to deliver for up to ``timeout`` seconds, leave the rest spooled.

        Returns True when nothing was left behind. Spooled leftovers are delivered by the next
        writer that starts on the same spool folder.
        """
        if self._closed:
            return True
        deadline = time.monotonic() + timeout
        self._closing = True
        self._wake.set()
        # Spooling is local disk work and is what keeps records from being lost, so it may take
        # longer than the delivery timeout (bounded still, should the disk hang).
        self._spooler.join(max(timeout, 30.0))
        self._closed = True
        if self._queue:  # appended while the spooler was finishing: spool them here
            self._drain()
        delivered = self.flush(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._stop_sender = True
            self._cond.notify_all()
        self._prepare_next.set()
        self._sender.join(max(0.0, min(1.0, deadline - time.monotonic())))
        self._preparer.join(max(0.0, min(1.0, deadline - time.monotonic())))
        if not delivered:
            with self._cond:
                left = len(self._pending)
            log.warning(
                "learnloop capture: %d batch(es) not delivered within %.1fs; they stay in %s for the next start",
                left, timeout, self.spool.root,
            )
        self._remove_delivered()
        if not self._sender.is_alive():
            self.transport.close()
        self.spool.close()
        return delivered

    def stats(self) -> dict[str, Any]:
        with self._cond:
            pending = len(self._pending)
        return {
            "transport": self.transport.name,
            "queued": len(self._queue),
            "pending_batches": pending,
            **self.counters,
            "last_error": self.last_error,
            "spool": str(self.spool.root),
        }


def _count(body: bytes) -> int:
    try:
        data = json.loads(body)
        return sum(len(data.get(k) or []) for k in _KINDS)
    except ValueError:
        return 0
