"""The capture client: settings, sampling and the background writer behind the module-level API.

``learnloop.configure()`` builds one and makes it the process default; ``learnloop.trajectory()``
and friends use the default (built from ``Settings`` on first use when nobody configured one).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from learnloop.capture.recorder import SOURCES, TrajectoryRecorder, new_id, validate_feedback
from learnloop.capture.sampling import KeepRule, Sampler
from learnloop.capture.spool import Spool
from learnloop.capture.transports import DatabaseTransport, HttpTransport, Transport
from learnloop.capture.writer import FEEDBACK, FLUSH_TIMEOUT, SCORE, TRAJECTORY, BackgroundWriter
from learnloop.errors import ConfigError, ValidationFailed

if TYPE_CHECKING:
    from learnloop.config import Settings
    from learnloop.store.db import Database

log = logging.getLogger("learnloop.capture")

# Ids of trajectories sampled out, remembered so late feedback on them is dropped quietly
# instead of being refused by the store as naming an unknown trajectory.
_DROPPED_MEMORY = 50_000


class CaptureClient:
    """Records trajectories, feedback and rewards through one background writer.

    Transport, in order of precedence: ``transport``; ``database`` (a ``Database`` or URL):
    in-process writes; ``server_url`` (or ``capture.server_url``): HTTP to a learnloop server;
    otherwise the configured database (``database_url``, default the SQLite file in the data dir).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        database: Database | str | None = None,
        server_url: str | None = None,
        token: str | None = None,
        transport: Transport | None = None,
        spool_dir: Path | str | None = None,
        sample_rate: float | None = None,
        keep_if: Iterable[KeepRule] = (),
        default_keep_rules: bool = True,
        source: str | None = None,
        project: str | None = None,
        batch_size: int | None = None,
        flush_interval: float | None = None,
        queue_size: int | None = None,
        shutdown_timeout: float | None = None,
        max_backoff: float = 30.0,
        flush_timeout: float = FLUSH_TIMEOUT,
    ) -> None:
        if settings is None:
            from learnloop.config import get_settings

            settings = get_settings()
        cap = settings.capture
        if source is not None and source not in SOURCES:
            raise ConfigError(f"source must be one of {', '.join(SOURCES)}, got {source!r}.")
        self.settings = settings
        self.source = source
        # Stamp the project only when someone chose it, so a server's own default applies otherwise.
        self.project = project or (settings.project if "project" in settings.model_fields_set else None)
        self.sampler = Sampler.from_settings(cap, sample_rate, keep_if, default_rules=default_keep_rules)
        self.shutdown_timeout = cap.shutdown_timeout if shutdown_timeout is None else shutdown_timeout
        self.transport = transport or self._make_transport(settings, database, server_url, token)

        from learnloop.paths import data_dir

        spool_root = Path(spool_dir) if spool_dir is not None else data_dir(settings.data_dir).spool
        self.writer = BackgroundWriter(
            self.transport,
            Spool(spool_root),
            batch_size=batch_size or cap.batch_size,
            flush_interval=flush_interval or cap.flush_interval,
            queue_size=queue_size or cap.queue_size,
            max_backoff=max_backoff,
            flush_timeout=flush_timeout,
            unknown_wait=cap.unknown_trajectory_wait,
        )
        self._dropped: OrderedDict[str, None] = OrderedDict()
        self._dropped_lock = threading.Lock()
        self._closed = False
        atexit.register(self._at_exit)
        _live_clients.add(self)

    @staticmethod
    def _make_transport(
        settings: Settings, database: Database | str | None, server_url: str | None, token: str | None
    ) -> Transport:

        holdout = settings.datasets.holdout_fraction
        if database is not None:
            db = _writer_database(database) if isinstance(database, str) else database
            return DatabaseTransport(db, project=settings.project, holdout_fraction=holdout)
        url = server_url or settings.capture.server_url
        if url:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"capture.server_url must start with http:// or https://, got {url!r}.")
            if token is None and settings.api_token is not None:
                token = settings.api_token.get_secret_value()
            return HttpTransport(url, token=token)
        return DatabaseTransport(
            _writer_database(settings.resolved_database_url),
            project=settings.project,
            holdout_fraction=holdout,
        )

    # -- recording ------------------------------------------------------------------------

    def trajectory(self, **fields: Any) -> TrajectoryRecorder:
        """Start recording a trajectory (see ``TrajectoryRecorder`` for the fields)."""
        if fields.get("source") is None and self.source is not None:
            fields["source"] = self.source
        return TrajectoryRecorder(self, **fields)

    def submit_trajectory(
        self,
        record: dict[str, Any],
        extra_feedback: list[dict[str, Any]] = (),
        *,  # type: ignore[assignment]
        force: bool = False,
    ) -> bool:
        if not force and not self.sampler.keep(record):
            with self._dropped_lock:
                self._dropped[record["id"]] = None
                if len(self._dropped) > _DROPPED_MEMORY:
                    self._dropped.popitem(last=False)
            return False
        if self.project is not None and "project" not in record:
            record["project"] = self.project
        if "source" not in record and self.source is not None:
            record["source"] = self.source
        submit = self.writer.submit
        submit(TRAJECTORY, record)
        for fb in extra_feedback:
            submit(FEEDBACK, {**fb, "trajectory_id": record["id"], "idempotency_key": new_id()})
        return True

    def write_now(self, records: list[dict[str, Any]]) -> bool:
        """Store these trajectories before returning: one batch straight through the transport, past the
        queue (so nothing queued earlier is overtaken that they could depend on: they are new ids).

        For a caller that must know a record is stored before it answers, such as a server handing out
        the id of an answer that feedback may name the next instant. When the store cannot take them
        now they go through the queue and spool as usual (nothing is lost) and this returns False.
        """
        from learnloop.jsonio import dumps

        for record in records:
            if self.project is not None and "project" not in record:
                record["project"] = self.project
            if "source" not in record and self.source is not None:
                record["source"] = self.source
        try:
            self.transport.send(dumps({TRAJECTORY: records}))
        except Exception as exc:  # down, busy or refused: the writer retries, spools, or sets aside
            log.warning(
                "learnloop capture: could not store %d record(s) at once (%s); queued", len(records), exc
            )
            for record in records:
                self.writer.submit(TRAJECTORY, record)
            return False
        return True

    def feedback(self, trajectory_id: str, **signals: Any) -> str | None:
        """Late feedback on a recorded trajectory, queued behind it. Returns the feedback's idempotency key
        (None when the trajectory was sampled out, so there is nothing to attach it to)."""
        if not trajectory_id or not isinstance(trajectory_id, str):
            raise ValidationFailed("feedback needs the trajectory id (t.id) it is about.")
        record = validate_feedback(signals)
        if self._was_dropped(trajectory_id):
            log.debug("learnloop capture: feedback for sampled-out trajectory %s dropped", trajectory_id)
            return None
        record["trajectory_id"] = trajectory_id
        record.setdefault("idempotency_key", new_id())
        self.writer.submit(FEEDBACK, record)
        return record["idempotency_key"]

    def reward(
        self,
        trajectory_id: str,
        name: str,
        value: float,
        *,
        source: str = "env",
        rationale: str | None = None,
    ) -> None:
        """A late reward (score) on a recorded trajectory."""
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValidationFailed(f"reward {name!r} must be a number, got {value!r}.") from None
        if not math.isfinite(value):
            raise ValidationFailed(f"reward {name!r} must be a finite number, got {value!r}.")
        if not name:
            raise ValidationFailed("a reward needs a name.")
        if self._was_dropped(trajectory_id):
            return
        record: dict[str, Any] = {
            "trajectory_id": trajectory_id,
            "name": name,
            "value": value,
            "source": source,
            "idempotency_key": f"sdk:{new_id()}",
        }
        if rationale:
            record["rationale"] = rationale
        self.writer.submit(SCORE, record)

    def _was_dropped(self, trajectory_id: str) -> bool:
        with self._dropped_lock:
            return trajectory_id in self._dropped

    def sampled_out(self, trajectory_id: str) -> bool:
        """Whether this client's sampling rules dropped that trajectory (recently: the last 50,000)."""
        return self._was_dropped(trajectory_id)

    # -- control --------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything recorded so far is in the store, for at most ``timeout`` seconds
        (default ``flush_timeout``, 30 s). False, with the reason logged, when the time ran out or
        the server refused the token; the records stay spooled and are retried."""
        return self.writer.flush(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush for up to ``timeout`` (default ``capture.shutdown_timeout``) and stop; leftovers stay
        spooled."""
        if self._closed:
            return True
        self._closed = True
        atexit.unregister(self._at_exit)
        return self.writer.close(self.shutdown_timeout if timeout is None else timeout)

    def stats(self) -> dict[str, Any]:
        return self.writer.stats()

    def _at_exit(self) -> None:
        try:
            self.close()
        except Exception:  # never turn a clean exit into a traceback
            log.exception("learnloop capture: shutdown flush failed; records stay spooled")


_default: CaptureClient | None = None
_default_lock = threading.Lock()
_live_clients: weakref.WeakSet[CaptureClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child (gunicorn/multiprocessing workers) inherits the client but not its threads:
    # retire the copies (the parent still owns their records) and let the child start its own.
    global _default, _default_lock
    _default_lock = threading.Lock()
    _default = None
    for client in list(_live_clients):
        client._closed = True
        atexit.unregister(client._at_exit)
    _live_clients.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def configure(settings: Settings | None = None, **options: Any) -> CaptureClient:
    """Set up capture for this process (replacing any earlier set-up, whose records are flushed first).

    Options are those of ``CaptureClient``: ``database``, ``server_url``, ``token``, ``sample_rate``,
    ``keep_if``, ``source``, ``project``, ``batch_size``, ``flush_interval``, ``shutdown_timeout``, ...
    Unset ones come from ``Settings`` (``capture.*``).
    """
    global _default
    with _default_lock:
        old, _default = _default, None
    if old is not None:
        old.close()
    client = CaptureClient(settings, **options)
    with _default_lock:
        _default = client
    return client


def get_client() -> CaptureClient:
    """The process's capture client, configured from Settings on first use."""
    global _default
    client = _default
    if client is not None:
        return client
    with _default_lock:
        if _default is None:
            _default = CaptureClient()
        return _default


def shutdown(timeout: float | None = None) -> bool:
    """Flush and stop the default client (also done automatically at interpreter exit)."""
    global _default
    with _default_lock:
        client, _default = _default, None
    return client.close(timeout) if client is not None else True


def _writer_database(url: str) -> Database:
    from learnloop.store.db import Database

    # No ping before each batch: the writer resends a batch that failed, so a connection gone
    # stale costs one retry, never a record, where a ping costs a round trip on every batch.
    return Database(url, pool_pre_ping=False)
