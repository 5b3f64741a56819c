"""Where the background writer delivers batches: the database in-process, or a learnloop server over HTTP.

Both take the same prepared batch and answer the same way: return on success, raise
``RetryLater`` when the store cannot take it now (the batch stays spooled and is resent), or
``Refused`` when the store will never take it (the writer then isolates the bad records).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from learnloop.errors import LearnloopError, NotFound, StoreUnavailable, ValidationFailed

if TYPE_CHECKING:
    import httpx

    from learnloop.store.db import Database
    from learnloop.store.records import IngestBatch

log = logging.getLogger("learnloop.capture")


class RetryLater(Exception):
    """The store is unreachable, busy or overloaded; resend the same batch after ``retry_after`` (or backoff)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Refused(Exception):
    """The store refused the batch for good (invalid record, unknown trajectory id, too large)."""


@dataclass(eq=False)
class PreparedBatch:
    """A batch: its JSON body (as spooled, and as sent over HTTP) and, once validated, the records.

    ``checked``/``valid``/``busy`` belong to the writer: whether the batch was validated, what
    is left of it to send (None: nothing), and whether a writer thread is working on it now.
    ``plan`` belongs to the transport: what its ``prepare`` made ready for ``send``.
    """

    body: bytes
    batch: IngestBatch | None = None
    count: int = 0
    checked: bool = False
    valid: PreparedBatch | None = None
    busy: bool = False
    ahead_failed: bool = False
    plan: Any = None


def _nothing() -> None:
    pass


class Transport(Protocol):
    name: str

    def prepare(self, prepared: PreparedBatch) -> None:
        """Work on a validated batch that needs no store (the writer does it ahead of ``send``)."""

    def send(self, prepared: PreparedBatch, *, while_blocked: Callable[[], None] = ...) -> None:
        """Deliver a batch. ``while_blocked`` is called right before the call that waits longest
        on the store (the insert, the HTTP request): the writer prepares the next batch then."""

    def close(self) -> None: ...


class DatabaseTransport:
    """Writes batches with ``learnloop.store.ingest``, one transaction per batch."""

    name = "database"

    def __init__(self, db: Database, *, project: str = "default", holdout_fraction: float = 0.1, migrate: bool = True) -> None:
        self.db = db
        self.project = project
        self.holdout_fraction = holdout_fraction
        # Migrations run on first contact rather than at configure(): an app must start (and
        # spool) even while its database is down.
        self._migrated = not migrate
        self._lock = threading.Lock()

    def prepare(self, prepared: PreparedBatch) -> None:
        """Plan the insert (rows, defaults, hashes, JSON encoding) while another batch is being written."""
        from learnloop.store.trajectories import plan_ingest

        if prepared.batch is not None and prepared.plan is None:
            prepared.plan = plan_ingest(prepared.batch, self.db.engine.dialect, project=self.project,
                                        holdout_fraction=self.holdout_fraction)

    def send(self, prepared: PreparedBatch, *, while_blocked: Callable[[], None] = _nothing) -> None:
        from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

        from learnloop.store.records import batch_from_json
        from learnloop.store.trajectories import apply_plan

        if prepared.plan is None:  # not prepared ahead (or that failed): here, and kept for a retry
            if prepared.batch is None:
                prepared.batch = batch_from_json(prepared.body)
            self.prepare(prepared)
        plan = prepared.plan
        plan.before_insert = while_blocked
        try:
            with self._lock:
                if not self._migrated:
                    self.db.upgrade()
                    self._migrated = True
                with self.db.connection() as conn:
                    apply_plan(conn, plan)
        except (NotFound, ValidationFailed) as exc:
            raise Refused(str(exc)) from exc
        except (IntegrityError, DataError) as exc:
            raise Refused(_first_line(exc)) from exc
        except StoreUnavailable as exc:
            raise RetryLater(str(exc)) from exc
        except SQLAlchemyError as exc:  # locked, connection lost mid-transaction, server restarting
            raise RetryLater(_first_line(exc)) from exc
        except LearnloopError as exc:
            raise Refused(str(exc)) from exc

    def close(self) -> None:
        self.db.dispose()


class HttpTransport:
    """POSTs batches to ``{server_url}/v1/ingest``; honours 429/503 Retry-After."""

    name = "http"

    def __init__(self, server_url: str, *, token: str | None = None, timeout: float = 30.0, client: httpx.Client | None = None) -> None:
        import httpx

        self.url = server_url.rstrip("/") + "/v1/ingest"
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = client or httpx.Client(timeout=httpx.Timeout(timeout, connect=5.0), headers=headers)
        self._headers = headers

    def prepare(self, prepared: PreparedBatch) -> None:
        pass  # the body goes as it is

    def send(self, prepared: PreparedBatch, *, while_blocked: Callable[[], None] = _nothing) -> None:
        import httpx

        try:
            while_blocked()
            r = self._client.post(self.url, content=prepared.body, headers=self._headers)
        except httpx.HTTPError as exc:
            raise RetryLater(f"cannot reach {self.url}: {exc}") from exc
        if r.is_success:
            return
        message = _error_text(r)
        if r.status_code in (429, 503):
            raise RetryLater(f"{self.url} answered {r.status_code}: {message}", _retry_after(r.headers.get("Retry-After")))
        if r.status_code in (401, 403):
            # A token problem is fixed by a person, not by the records: keep them spooled.
            log.error("learnloop capture: %s refused the token (%s); set LEARNLOOP_API_TOKEN. Records stay spooled.", self.url, message)
            raise RetryLater(message)
        if r.status_code in (404, 409, 413, 422):
            raise Refused(f"{r.status_code}: {message}")
        raise RetryLater(f"{self.url} answered {r.status_code}: {message}")

    def close(self) -> None:
        self._client.close()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _error_text(r: httpx.Response) -> str:
    try:
        data = r.json()
        return str(data.get("error") or data.get("detail") or data)
    except Exception:
        return r.text[:500]


def _first_line(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
