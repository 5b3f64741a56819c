"""What a serving process knows: which version each alias points at, kept in step with the database.

The alias rows are the one source of truth. A watcher thread re-reads them every
``serving.alias_poll_seconds``; when one moved, it loads the new version's adapter first and only
then switches the alias in memory (one dict assignment), so no request ever waits on a load it did
not ask for and requests already running keep the version they started with. A version id can also
be named directly; it is loaded on first use.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from learnloop.errors import Conflict, LearnloopError, NotFound, ValidationFailed
from learnloop.serving.backend import BASE, ServingBackend
from learnloop.store.aliases import DEFAULT_ALIAS, AliasView, list_aliases
from learnloop.store.db import Database
from learnloop.store.models import ModelVersion

log = logging.getLogger("learnloop.serving")


@dataclass(frozen=True)
class Route:
    """Where one request goes: ``served`` is ``"base"`` or a version id; ``shadow`` also runs, unseen."""

    served: str
    requested: str
    alias: str | None = None
    shadow: str | None = None


def _bucket(alias: str, user: str) -> float:
    # Sticky split: the same user lands on the same side for as long as the split stands.
    return int(hashlib.sha256(f"{alias}\0{user}".encode()).hexdigest()[:8], 16) / 2**32


class ServingRuntime:
    """Aliases, version loading and the served-traffic capture, around one backend."""

    def __init__(
        self,
        backend: ServingBackend,
        db: Database,
        *,
        poll_seconds: float = 0.25,
        capture: Any = None,
        max_adapters: int = 16,
    ) -> None:
        self.backend = backend
        self.db = db
        self.poll_seconds = poll_seconds
        self.capture = capture  # a ServedCapture, or None when capture is off
        self.aliases: dict[str, AliasView] = {}
        self.max_adapters = max_adapters
        self._last_used: dict[str, float] = {}
        self._load_lock = threading.Lock()
        self._failed: dict[str, str] = {}  # version id -> why it could not be loaded (not retried each poll)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- convergence -----------------------------------------------------------------------------

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._watch, name="learnloop-alias-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.capture is not None:
            self.capture.close()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # the database may be briefly away; keep serving what we have
                log.warning("could not read the aliases; serving the last known ones", exc_info=True)

    def refresh(self) -> None:
        """Read the alias rows; load what they name, then switch each alias that moved."""
        rows = {a.name: a for a in list_aliases(self.db)}
        if rows == self.aliases:
            return
        current = dict(self.aliases)
        for name, row in rows.items():
            if current.get(name) == row:
                continue
            try:
                for vid in (row.version_id, row.candidate_id):
                    if vid is not None:
                        self.ensure_loaded(vid)
            except LearnloopError as exc:
                if self._failed.get(name) != str(exc):
                    log.error("alias %s -> %s not applied: %s", name, row.version_id, exc)
                    self._failed[name] = str(exc)
                continue
            self._failed.pop(name, None)
            current[name] = row
            log.info("alias %s now serves %s", name, row.version_id or BASE)
        for name in set(current) - set(rows):
            del current[name]
        self.aliases = current  # one assignment: a request sees the old table or the new one

    def ensure_loaded(self, version_id: str) -> None:
        """Load a version's adapter under its id (a no-op when loaded); NotFound for an unknown id."""
        if version_id == BASE or version_id in self.backend.list():
            return
        with self._load_lock:
            if version_id in self.backend.list():
                return
            with self.db.read_session() as session:
                row = session.get(ModelVersion, version_id)
                path = row.artifact_path if row is not None else None
            if row is None:
                raise NotFound(
                    f"The model {version_id!r} does not exist: use 'learnloop', 'base' or a version id "
                    "(GET /v1/models lists them)."
                )
            if not path:
                raise Conflict(f"Model version {version_id!r} has no adapter files to serve.")
            started = time.perf_counter()
            try:
                self.backend.load_adapter(version_id, path)
            except LearnloopError:
                raise
            except Exception as exc:  # a corrupt or mismatched adapter is the version's problem, not a 500
                raise Conflict(
                    f"Model version {version_id!r} could not be loaded from {path}: {exc}"
                ) from exc
            log.info("loaded %s from %s in %.2fs", version_id, path, time.perf_counter() - started)
            self._last_used[version_id] = time.monotonic()
            self._evict()

    def _evict(self) -> None:
        """Unload the least recently used versions past ``max_adapters``
        (never one an alias names or in use)."""
        loaded = [n for n in self.backend.list() if n != BASE]
        if len(loaded) <= self.max_adapters:
            return
        pinned = {v for a in self.aliases.values() for v in (a.version_id, a.candidate_id) if v}
        for name in sorted((n for n in loaded if n not in pinned), key=lambda n: self._last_used.get(n, 0.0)):
            if len(loaded) <= self.max_adapters:
                return
            try:
                self.backend.unload_adapter(name)
                loaded.remove(name)
                log.info("unloaded %s (least recently used)", name)
            except LearnloopError:  # answering right now: try the next one
                continue

    # -- routing ---------------------------------------------------------------------------------

    def route(self, model: str, user: str | None = None) -> Route:
        """Resolve a requested model name; may load a version named directly (blocking)."""
        if not model:
            raise ValidationFailed("model is required.", [("model", "required")])
        if model == BASE:
            return Route(BASE, model)
        alias = self.aliases.get(model)
        if alias is None and model == DEFAULT_ALIAS:
            return Route(BASE, model, alias=model)  # no promotion yet: the alias serves the base
        if alias is not None:
            served = alias.version_id or BASE
            shadow = None
            if alias.candidate_id:
                if (
                    alias.split > 0
                    and _bucket(model, user if user is not None else str(random.random())) < alias.split
                ):
                    served = alias.candidate_id
                elif alias.shadow > 0 and random.random() < alias.shadow:
                    shadow = alias.candidate_id
            return Route(served, model, alias=model, shadow=shadow)
        self.ensure_loaded(model)
        self._last_used[model] = time.monotonic()
        self._evict()
        return Route(model, model)

    def model_names(self) -> list[str]:
        """Every name a request can use: the aliases, ``base`` and the versions with adapter files."""
        with self.db.read_session() as session:
            from sqlalchemy import select

            versions = list(
                session.scalars(
                    select(ModelVersion.id)
                    .where(ModelVersion.artifact_path.is_not(None))
                    .order_by(ModelVersion.created_at)
                )
            )
        names = dict.fromkeys([DEFAULT_ALIAS, *sorted(self.aliases), BASE, *versions])
        return list(names)


class ServedCapture:
    """Served requests and answers as trajectories (source = served).

    An answer a client gets is stored before its last bytes leave the server (``store``: one
    transaction, off the event loop), so feedback sent the instant the answer arrives finds it. When the
    database cannot take it right then it goes through the background writer (spooled, retried) and its
    id is remembered as unconfirmed: feedback naming it waits for it a bounded time (``await_stored``).
    Shadow answers, which no client sees, go through the writer (``record``). Text a database cannot
    hold (NUL, lone surrogates, bytes that were not UTF-8) is escaped reversibly, never refused.
    """

    _UNCONFIRMED_MEMORY = 10_000

    def __init__(self, settings: Any, db: Database) -> None:
        from learnloop.capture.client import CaptureClient

        self.client = CaptureClient(settings, database=db, source="served", flush_interval=0.05)
        self._unconfirmed: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def build(
        self,
        trajectory_id: str,
        *,
        messages: list[dict[str, Any]],
        answer: str | None,
        tool_calls: list[dict[str, Any]] | None,
        model: str,
        scenario: str | None,
        tools: list[dict[str, Any]] | None,
        metadata: dict[str, Any],
        group: str | None = None,
    ) -> dict[str, Any]:
        """The trajectory record of one served answer (its unstorable text escaped and marked)."""
        t = self.client.trajectory(
            id=trajectory_id,
            scenario=scenario or "served",
            source="served",
            model=model,
            tools=tools,
            metadata=metadata,
            group=group,
            escape_unstorable=True,
        )
        for m in messages:
            t.messages.append(m)  # already checked by the request's own validation
        if answer or tool_calls:
            t.assistant(answer or None, tool_calls=tool_calls)
        else:
            t.assistant("")
        record = t.to_record()
        if model != BASE:
            record["model_version"] = model
        return record

    def store(self, records: list[dict[str, Any]]) -> bool:
        """Write these served answers now (True), or queue them and remember their ids (False)."""
        try:
            if self.client.write_now(records):
                return True
        except Exception:  # capture must never break serving
            log.exception("could not capture served trajectories %s", [r.get("id") for r in records])
            return False
        with self._lock:
            for r in records:
                self._unconfirmed[r["id"]] = None
            while len(self._unconfirmed) > self._UNCONFIRMED_MEMORY:
                self._unconfirmed.popitem(last=False)
        return False

    def record(self, trajectory_id: str, **fields: Any) -> None:
        """Queue one served answer through the background writer (``build``'s fields)."""
        try:
            # served traffic is the loop's own data: never sampled away
            self.client.submit_trajectory(self.build(trajectory_id, **fields), force=True)
        except Exception:  # capture must never break serving
            log.exception("could not capture served trajectory %s", trajectory_id)

    def await_stored(self, ids: Any, timeout: float) -> bool:
        """When any of ``ids`` is an answer this server served but could not store at once, wait up to
        ``timeout`` seconds for the writer to deliver it; True if there was something to wait for."""
        with self._lock:
            waiting = [i for i in ids if i in self._unconfirmed]
        if not waiting:
            return False
        if self.client.flush(timeout):
            with self._lock:
                for i in waiting:
                    self._unconfirmed.pop(i, None)
        return True

    def flush(self, timeout: float | None = None) -> bool:
        return self.client.flush(timeout)

    def close(self) -> None:
        self.client.close(timeout=5)
