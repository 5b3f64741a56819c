"""The background writer: the app thread only appends to a queue; two threads do the rest.

* The **spooler** drains the queue into batches (``batch_size`` records, or whatever arrived
  within ``flush_interval``) and writes each batch to the spool with one fsync before anything
  is sent (write-ahead), so a killed process leaves it for the next start.
* The **deliverer** sends the spooled batches strictly in order through the transport and
  removes each file once the store has it. Order matters: late feedback must reach the store
  after its trajectory.

What the deliverer does with a batch depends on how the transport answered:

* stored: remove the file, take the next batch;
* ``RetryLater`` (the store is down, busy or says wait): keep the batch and retry it after a
  backoff (exponential, or the server's Retry-After) while the spooler keeps moving records to
  disk; an outage never costs a record;
* ``UnknownTrajectory`` (feedback or scores name a trajectory the store does not have yet, such as an
  answer a server has just served and is still writing): retry the batch every fraction of a second
  for up to ``unknown_wait`` seconds, then treat it as refused;
* ``Refused``, or any other error ``MAX_ATTEMPTS`` times in a row: split the batch in halves and
  send each, down to single records; a record that fails on its own is set aside in
  ``spool/rejected/`` with the reason, and every other record is delivered. A batch that fails
  for a reason nobody foresaw therefore never holds back the records around it or behind it.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from learnloop.capture.spool import Spool
from learnloop.capture.transports import Refused, RetryLater, TokenRefused, Transport, UnknownTrajectory
from learnloop.jsonio import (  # dumps re-exported: tests and tools build spool bodies with writer.dumps
    MAX_DEPTH,
    TooDeep,
    dumps,
)

log = logging.getLogger("learnloop.capture")

# Queue items are (kind, record JSON); kind names the batch part the record goes in.
TRAJECTORY, FEEDBACK, SCORE = "trajectories", "feedback", "scores"
KINDS = (TRAJECTORY, FEEDBACK, SCORE)

# Failures of one batch, other than outages, before it is split to find the records that fail.
MAX_ATTEMPTS = 3
# Seconds flush() waits when it is given no timeout: it must never hang an app on a server that is
# down or refuses the token. Records not delivered by then stay spooled and keep being retried.
FLUSH_TIMEOUT = 30.0
# How often a batch naming a trajectory the store does not have yet is retried while it waits for it.
UNKNOWN_RETRY_SECONDS = 0.1


class _WaitForTrajectory(RetryLater):
    """The batch names a trajectory not stored yet: retried shortly, not an outage."""


@dataclass(eq=False)
class _Pending:
    """A spooled batch waiting for delivery. ``body`` is None when it is to be read back from disk."""

    path: Path
    body: bytes | None
    count: int  # records in it (0 until known for a batch adopted from disk)
    failures: int = 0
    parts: list[list[tuple[str, Any]]] | None = None  # what is left to send of a batch being split
    delivered_in_parts: int = 0
    unknown_since: float | None = None  # when the store first said it names an unknown trajectory


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
        flush_timeout: float = FLUSH_TIMEOUT,
        unknown_wait: float = 5.0,
    ) -> None:
        self.transport = transport
        self.unknown_wait = unknown_wait
        self.spool = spool
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.queue_size = queue_size
        self.max_backoff = max_backoff
        self.flush_timeout = flush_timeout
        self.counters = {"delivered": 0, "rejected": 0, "retries": 0, "overflowed": 0}
        self.last_error: str | None = None

        self._queue: deque[tuple[str, bytes]] = deque()  # appended by app threads without a lock
        self._wake_spooler = threading.Event()
        self._spool_lock = threading.Lock()  # one thread at a time moves the queue to disk, in order
        self._spooling = 0  # threads moving records from the queue to the spool right now
        self._cond = threading.Condition()  # guards everything below
        self._pending: deque[_Pending] = deque()
        self._in_memory = 0  # records whose body is held in memory beside its file
        self._retry_at = 0.0
        self._server_said_wait = False  # a Retry-After from the server is honoured even by flush()
        self._outages = 0  # RetryLater answers in a row, for the backoff
        self._token_refusals = 0  # TokenRefused answers ever: a flush waiting on one gives up
        self._kick = False  # set by flush(): retry the head batch now rather than after the backoff
        self._closing = False
        self._closed = False
        self._stopped = False

        for path in spool.adopt_orphans():
            self._pending.append(_Pending(path, None, 0))
        if self._pending:
            log.info(
                "learnloop capture: redelivering %d spooled batch(es) from an earlier run", len(self._pending)
            )
        self._spooler = threading.Thread(
            target=self._spool_loop, name="learnloop-capture-spooler", daemon=True
        )
        self._deliverer = threading.Thread(
            target=self._deliver_loop, name="learnloop-capture-deliverer", daemon=True
        )
        self._spooler.start()
        self._deliverer.start()

    # -- app thread -----------------------------------------------------------------------

    def submit(self, kind: str, record: dict[str, Any]) -> None:
        """Enqueue one record. Never blocks on the network; a full queue spills to disk.

        The record is encoded here, on the caller's thread: what is stored is the record as it
        was when recorded (later changes by the app do not leak in), a record that cannot be
        encoded fails at the line that recorded it, and the queue holds bytes, which Python's
        garbage collector never has to traverse. A record nested too deep for any store (past
        ``MAX_DEPTH``, seen while encoding, off the fast path) is set aside in ``spool/rejected``
        with the reason at once.
        """
        try:
            raw = dumps(record, max_depth=MAX_DEPTH)
        except TooDeep as exc:  # no store takes it: set aside now, not sent to be refused
            self._reject(kind, record, str(exc))
            return
        self._queue.append((kind, raw))
        n = len(self._queue)
        if self._closed or n > self.queue_size:
            # Closed, or the writer cannot keep up: this thread moves the queue to the spool
            # itself, oldest first, so late feedback still lands after its trajectory.
            if not self._closed:
                self.counters["overflowed"] += 1
            self._drain()
        elif n >= self.batch_size:
            self._wake_spooler.set()

    # -- spooler --------------------------------------------------------------------------

    def _spool_loop(self) -> None:
        while True:
            self._wake_spooler.wait(self.flush_interval)
            self._wake_spooler.clear()
            try:
                self._drain()
            except Exception:  # a full disk, say: the records stay queued; try again
                log.exception("learnloop capture: could not write to the spool %s", self.spool.root)
                time.sleep(min(self.flush_interval, 1.0))
            if self._closing and not self._queue:
                return

    def _drain(self) -> None:
        """Move the whole queue to the spool, ``batch_size`` records a file, in queue order."""
        with self._cond:
            self._spooling += 1
        try:
            with self._spool_lock:
                while self._queue:
                    items = [self._queue.popleft() for _ in range(min(len(self._queue), self.batch_size))]
                    try:
                        body = _join(items)
                        path = self.spool.write(body)
                    except BaseException:
                        self._queue.extendleft(reversed(items))  # not on disk: back to the head of the queue
                        raise
                    self._add_pending(path, body, len(items))
        finally:
            with self._cond:
                self._spooling -= 1
                self._cond.notify_all()

    def _add_pending(self, path: Path, body: bytes, count: int) -> None:
        with self._cond:
            # Bodies stay in memory beside their files up to queue_size records; past that the
            # deliverer reads them back, so a long outage costs disk, not memory.
            if self._in_memory + count > self.queue_size:
                body = None
            else:
                self._in_memory += count
            self._pending.append(_Pending(path, body, count))
            self._cond.notify_all()

    # -- deliverer ------------------------------------------------------------------------

    def _deliver_loop(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
                if batch is None:
                    return
            try:
                delivered = self._deliver(batch)
            except _WaitForTrajectory as exc:
                self._outage(exc, count_outage=False)
                continue
            except RetryLater as exc:
                self._outage(exc)
                continue
            except Exception as exc:  # not an outage: retried a few times, then split
                batch.failures += 1
                log.warning(
                    "learnloop capture: delivering %s failed (%s: %s), attempt %d of %d",
                    batch.path.name,
                    type(exc).__name__,
                    exc,
                    batch.failures,
                    MAX_ATTEMPTS,
                )
                self._outage(RetryLater(f"{type(exc).__name__}: {exc}"), count_outage=False)
                continue
            self.spool.remove(batch.path)
            with self._cond:
                self.counters["delivered"] += delivered
                if self._outages:
                    log.info(
                        "learnloop capture: %s reachable again; delivering the spool", self.transport.name
                    )
                self._outages = 0
                self._retry_at = 0.0
                self._server_said_wait = False
                self._pending.popleft()
                if batch.body is not None:
                    self._in_memory -= batch.count
                self._cond.notify_all()

    def _next_batch(self) -> _Pending | None:
        """Wait (holding ``_cond``) until the head batch is due; None when the writer stops."""
        while not self._stopped:
            if self._pending:
                due = self._retry_at - time.monotonic()
                if due <= 0 or (self._kick and not self._server_said_wait):
                    self._kick = False
                    return self._pending[0]
                self._cond.wait(due)
            else:
                self._cond.wait()
        return None

    def _deliver(self, batch: _Pending) -> int:
        """Send one batch; returns how many records the store took. Raises ``RetryLater`` on an outage."""
        if batch.parts is not None:  # a split interrupted by an outage goes on where it stopped
            return self._split(batch, body=b"", reason="")
        body = batch.body if batch.body is not None else self._read(batch.path)
        if body is None:
            return 0
        if batch.failures >= MAX_ATTEMPTS:
            return self._split(batch, body, f"failed {batch.failures} times: {self.last_error}")
        try:
            self.transport.send(body)
        except UnknownTrajectory as exc:
            now = time.monotonic()
            batch.unknown_since = batch.unknown_since or now
            if now - batch.unknown_since < self.unknown_wait:
                raise _WaitForTrajectory(str(exc), retry_after=UNKNOWN_RETRY_SECONDS) from None
            return self._split(batch, body, f"{exc} (waited {self.unknown_wait:g} s for it)")
        except Refused as exc:
            return self._split(batch, body, str(exc))
        return batch.count or _count(body)

    def _read(self, path: Path) -> bytes | None:
        """A spooled body from disk, or None when there is nothing to send."""
        try:
            body = self.spool.read(path)
        except FileNotFoundError:
            return None
        if body is None:
            log.warning(
                "learnloop capture: %s was cut short by a crash before it was sent; removing it", path.name
            )
            return None
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            # Written by another tool or an older version: a lone surrogate's escape becomes
            # U+FFFD, as when such text is recorded. Not JSON at all: sent as it is, and refused.
            try:
                return dumps(json.loads(body))
            except ValueError:
                pass
        return body

    def _split(self, batch: _Pending, body: bytes, reason: str) -> int:
        """Deliver a batch the store would not take whole: halves, then quarters, down to single
        records; a record that fails alone is set aside with the reason. Returns how many records
        the store took. A ``RetryLater`` part-way keeps what is left in ``batch.parts`` for the
        next try (and the file spooled, should the process die: resending what was already
        delivered is a no-op for the store)."""
        if batch.parts is None:
            records = _records(body)
            if records is None:  # not an ingest batch at all (a corrupted file): set aside whole
                self._reject("batch", body.decode("utf-8", "replace"), f"not a JSON ingest batch ({reason})")
                return 0
            log.warning(
                "learnloop capture: the store did not take a batch (%s); looking for the records it refuses",
                reason,
            )
            middle = len(records) // 2
            batch.parts = [part for part in (records[:middle], records[middle:]) if part]
        while batch.parts:
            part = batch.parts[0]
            try:
                self.transport.send(_join([(kind, dumps(record)) for kind, record in part]))
            except RetryLater:
                raise
            except Exception as exc:
                if len(part) > 1:
                    middle = len(part) // 2
                    batch.parts[0:1] = [part[:middle], part[middle:]]
                    continue
                kind, record = part[0]
                self._reject(
                    kind, record, str(exc) if isinstance(exc, Refused) else f"{type(exc).__name__}: {exc}"
                )
            else:
                batch.delivered_in_parts += len(part)
            batch.parts.pop(0)
        return batch.delivered_in_parts

    def _reject(self, kind: str, record: Any, reason: str) -> None:
        self.spool.reject(kind, record, reason)
        with self._cond:
            self.counters["rejected"] += 1

    def _outage(self, exc: RetryLater, count_outage: bool = True) -> None:
        with self._cond:
            if count_outage:
                self._outages += 1
            if isinstance(exc, TokenRefused):
                self._token_refusals += 1
            self.counters["retries"] += 1
            self.last_error = str(exc)
            delay = exc.retry_after
            self._server_said_wait = delay is not None
            if delay is None:
                failures = max(self._outages, 1)
                delay = min(self.max_backoff, 0.25 * 2 ** min(failures, 16)) * random.uniform(0.5, 1.0)
            self._retry_at = time.monotonic() + delay
            outages = self._outages
        if count_outage and (outages == 1 or outages % 20 == 0):
            log.warning(
                "learnloop capture: cannot deliver to the %s (%s); records are spooled in %s, "
                "retrying in %.1fs",
                self.transport.name,
                exc,
                self.spool.root,
                delay,
            )

    # -- control --------------------------------------------------------------------------

    def _idle(self) -> bool:
        return not self._queue and not self._spooling and not self._pending

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver everything recorded so far; True when it all reached the store within ``timeout``
        seconds (None: ``flush_timeout``, 30 s; ``math.inf`` waits for as long as it takes).

        False as soon as the server refuses the token (waiting cannot help), or when the time runs
        out (the store unreachable, or slower than that); the reason is logged and kept in
        ``stats()["last_error"]``. What was not delivered stays spooled and is retried."""
        limit = self.flush_timeout if timeout is None else timeout
        delivered, why = self._wait_delivered(limit)
        if not delivered:
            with self._cond:
                pending = len(self._pending)
            log.warning(
                "learnloop capture: flush gave up after %.1fs (%s); %d batch(es) not delivered yet stay "
                "spooled in %s and are retried",
                limit,
                why,
                pending,
                self.spool.root,
            )
        return delivered

    def _wait_delivered(self, timeout: float) -> tuple[bool, str]:
        """(True, "") once everything recorded so far is stored, else (False, why) after ``timeout``
        seconds or at the first refusal of the token."""
        deadline = time.monotonic() + timeout
        self._wake_spooler.set()
        with self._cond:
            self._kick = True
            refusals = self._token_refusals
            self._cond.notify_all()
            while not self._idle():
                if self._token_refusals > refusals:
                    return False, f"the server refused the token: {self.last_error}"
                if self._queue and not self._spooling:
                    self._wake_spooler.set()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if self._outages:
                        return False, f"the {self.transport.name} store cannot be reached: {self.last_error}"
                    return False, f"not all delivered in time (last error: {self.last_error or 'none'})"
                self._cond.wait(min(0.05, remaining))
        return True, ""

    def close(self, timeout: float = 5.0) -> bool:
        """Stop: spool what is queued, try to deliver for up to ``timeout`` seconds, leave the rest spooled.

        Returns True when nothing was left behind. Spooled leftovers are delivered by the next
        writer that starts on the same spool folder.
        """
        if self._closed:
            return True
        deadline = time.monotonic() + timeout
        self._closing = True
        self._wake_spooler.set()
        # Spooling is local disk work and is what keeps records from being lost, so it may take
        # longer than the delivery timeout (bounded still, should the disk hang).
        self._spooler.join(max(timeout, 30.0))
        self._closed = True
        self._drain()  # anything appended while the spooler was finishing
        delivered, why = self._wait_delivered(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._stopped = True
            left = len(self._pending)
            self._cond.notify_all()
        self._deliverer.join(max(0.0, min(1.0, deadline - time.monotonic())))
        if not delivered:
            log.warning(
                "learnloop capture: %d batch(es) not delivered within %.1fs (%s); they stay in %s "
                "for the next start",
                left,
                timeout,
                why,
                self.spool.root,
            )
        if not self._deliverer.is_alive():
            self.transport.close()
        self.spool.close()
        return delivered

    def stats(self) -> dict[str, Any]:
        with self._cond:
            pending = len(self._pending)
            counters = dict(self.counters)
        return {
            "transport": self.transport.name,
            "queued": len(self._queue),
            "pending_batches": pending,
            **counters,
            "last_error": self.last_error,
            "spool": str(self.spool.root),
        }


def _join(items: list[tuple[str, bytes]]) -> bytes:
    """An ``IngestBatch`` JSON body from records already encoded, kept in their order within each part."""
    grouped: dict[str, list[bytes]] = {kind: [] for kind in KINDS}
    for kind, raw in items:
        grouped.setdefault(kind, []).append(raw)
    parts = [b'"%s":[%s]' % (kind.encode(), b",".join(raws)) for kind, raws in grouped.items() if raws]
    return b"{" + b",".join(parts) + b"}"


def _records(body: bytes) -> list[tuple[str, Any]] | None:
    """The batch's records as (kind, record) in delivery order, or None when it is no ingest batch."""
    try:
        grouped = json.loads(body)
    except ValueError:
        return None
    if not isinstance(grouped, dict):
        return None
    records = []
    # Trajectories first: late feedback and scores in the same batch may name them.
    for kind in sorted(grouped, key=lambda k: KINDS.index(k) if k in KINDS else len(KINDS)):
        items = grouped[kind]
        records += [(kind, item) for item in (items if isinstance(items, list) else [items])]
    return records


def _count(body: bytes) -> int:
    records = _records(body)
    return len(records) if records is not None else 0
