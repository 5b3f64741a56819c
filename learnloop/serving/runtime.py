"""What a serving process knows: which version each alias points at, kept in step with the database.

A target is a version id, ``base`` or ``upstream:<name>`` (an ``[[upstreams]]`` entry, answered by
its ``UpstreamBackend``; ``backend_for`` picks the backend a target is answered by).

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
from learnloop.serving.upstream import is_upstream
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
        upstreams: dict[str, Any] | None = None,
        own_price: Any = None,
        traffic_flush_seconds: float = 2.0,
    ) -> None:
        self.backend = backend
        self.upstreams: dict[str, Any] = dict(upstreams or {})  # "upstream:<name>" -> UpstreamBackend
        self.own_price = own_price  # a config.Price for the local model's tokens, or None
        self.traffic_flush_seconds = traffic_flush_seconds
        self._traffic: dict[tuple[Any, str, str], list[float]] = {}
        self._traffic_lock = threading.Lock()
        self._traffic_flushed = time.monotonic()
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
        for upstream in self.upstreams.values():
            upstream.close()
        self.flush_traffic()
        if self.capture is not None:
            self.capture.close()

    async def aclose(self) -> None:
        """Close the upstreams' connections of the running event loop (before ``stop``, at shutdown)."""
        for upstream in self.upstreams.values():
            await upstream.aclose()

    def backend_for(self, target: str) -> Any:
        """The backend that answers ``target``: its upstream's, or the local one."""
        return self.upstreams[target] if is_upstream(target) else self.backend

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # the database may be briefly away; keep serving what we have
                log.warning("could not read the aliases; serving the last known ones", exc_info=True)
            if time.monotonic() - self._traffic_flushed >= self.traffic_flush_seconds:
                self.flush_traffic()

    # -- traffic counts ----------------------------------------------------------------------------

    def count(self, route: Route, prompt_tokens: int, completion_tokens: int, *, ok: bool = True) -> None:
        """Count one answer of ``route.served`` (priced at its upstream's price, or the local one's);
        written to the traffic counts with the next flush."""
        from learnloop.store.models import utcnow
        from learnloop.store.traffic import minute_of

        target = route.served
        up = self.upstreams.get(target)
        price = up.settings.price_per_1k_tokens if up is not None else self.own_price
        cost = price.cost(prompt_tokens, completion_tokens) if price is not None else 0.0
        key = (minute_of(utcnow()), route.alias or "", target)
        with self._traffic_lock:
            row = self._traffic.setdefault(key, [0, 0, 0, 0, 0.0])
            row[0] += 1
            row[1] += 0 if ok else 1
            row[2] += prompt_tokens
            row[3] += completion_tokens
            row[4] += cost

    def flush_traffic(self) -> None:
        """Write the counts gathered since the last flush (kept for the next one if the database is away)."""
        from learnloop.store.traffic import add_counts

        self._traffic_flushed = time.monotonic()
        with self._traffic_lock:
            pending, self._traffic = self._traffic, {}
        if not pending:
            return
        names = ("requests", "cut", "prompt_tokens", "completion_tokens", "cost")
        rows = [
            {"minute": m, "alias": a, "target": t, **dict(zip(names, v, strict=True))}
            for (m, a, t), v in pending.items()
        ]
        try:
            add_counts(self.db, rows)
        except Exception:
            log.warning("could not write traffic counts; keeping them for the next try", exc_info=True)
            with self._traffic_lock:
                for key, v in pending.items():
                    row = self._traffic.setdefault(key, [0, 0, 0, 0, 0.0])
                    for i, x in enumerate(v):
                        row[i] += x

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
        """Load a version's adapter under its id (a no-op when loaded); NotFound for an unknown id.
        An upstream target needs no loading, only its ``[[upstreams]]`` entry in this server."""
        if is_upstream(version_id):
            if version_id not in self.upstreams:
                known = ", ".join(sorted(self.upstreams)) or "none"
                raise NotFound(
                    f"{version_id!r} is not an upstream of this server (its [[upstreams]]: {known}); "
                    "add it to learnloop.toml and restart the server."
                )
            return
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
        if not is_upstream(model):
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
        names = dict.fromkeys(
            [DEFAULT_ALIAS, *sorted(self.aliases), BASE, *versions, *sorted(self.upstreams)]
        )
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
        source: str = "served",
        model_version: str | None = None,
    ) -> dict[str, Any]:
        """The trajectory record of one served answer (its unstorable text escaped and marked).

        ``model`` is what produced it: a version id or ``base`` (also its ``model_version``), or for an
        upstream's answer (``source = "teacher"``) the upstream's model name, with ``model_version``
        the target (``upstream:<name>``)."""
        t = self.client.trajectory(
            id=trajectory_id,
            scenario=scenario or "served",
            source=source,
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
        if model_version is not None:
            record["model_version"] = model_version
        elif model != BASE:
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

    def queue(self, records: list[dict[str, Any]]) -> int:
        """Hand these answers (an upstream's: teacher data) to the background writer through the capture
        sampling rules (``capture.source_sample_rates``, ``keep_confident``), never waiting on the
        database; returns how many were kept. Feedback naming a kept one waits for it (as for a
        delayed write); one sampled out is remembered, so feedback on it is dropped, not refused."""
        kept = 0
        for r in records:
            try:
                if self.client.submit_trajectory(r):
                    kept += 1
                    with self._lock:
                        self._unconfirmed[r["id"]] = None
                        while len(self._unconfirmed) > self._UNCONFIRMED_MEMORY:
                            self._unconfirmed.popitem(last=False)
            except Exception:  # capture must never break serving
                log.exception("could not capture upstream answer %s", r.get("id"))
        return kept

    def not_kept(self, ids: Any) -> set[str]:
        """Which of ``ids`` are answers this server served but the sampling rules did not keep."""
        return {i for i in ids if isinstance(i, str) and self.client.sampled_out(i)}

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
