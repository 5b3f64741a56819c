"""Where the background writer delivers a batch: the database in-process, or a learnloop server over HTTP.

A transport takes a batch's JSON body and answers in one of three ways: it returns (stored), it
raises ``RetryLater`` (the store cannot take it now: the batch stays spooled and is resent), or
it raises ``Refused`` (the store will never take it as it is). Any other exception is a failure
nobody planned for; the writer treats a batch that keeps failing like a refused one. Transports
hold no writer state: retries, backoff and splitting live in ``writer.py``.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Protocol

from learnloop.errors import Conflict, NotFound, StoreUnavailable, ValidationFailed

if TYPE_CHECKING:
    import httpx

    from learnloop.store.db import Database

log = logging.getLogger("learnloop.capture")


class RetryLater(Exception):
    """The store is unreachable, busy or overloaded: resend the batch after ``retry_after`` (or a backoff)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TokenRefused(RetryLater):
    """The server refused the token (401/403): the batch stays spooled, but only a person can fix it,
    so a ``flush()`` waiting on it gives up at once."""


class Refused(Exception):
    """The store refused the batch for good (an invalid record, an unknown trajectory id, too large)."""


class UnknownTrajectory(Refused):
    """Feedback or scores name a trajectory the store does not have (yet: one just served may still be
    on its way), so the writer retries for ``capture.unknown_trajectory_wait`` before setting it aside."""


class Transport(Protocol):
    name: str

    def send(self, body: bytes) -> None:
        """Deliver one ``IngestBatch`` JSON body (see the module docstring for the answers)."""

    def close(self) -> None: ...


class DatabaseTransport:
    """Writes batches with ``learnloop.store.ingest``, one transaction per batch."""

    name = "database"

    def __init__(
        self, db: Database, *, project: str = "default", holdout_fraction: float = 0.1, migrate: bool = True
    ) -> None:
        self.db = db
        self.project = project
        self.holdout_fraction = holdout_fraction
        # Migrations run on first contact rather than at configure(): an app must start (and
        # spool) even while its database is down.
        self._migrated = not migrate
        self._lock = threading.Lock()

    def send(self, body: bytes) -> None:
        from pydantic import ValidationError

        from learnloop.errors import problems_text
        from learnloop.store.records import batch_from_json
        from learnloop.store.trajectories import ingest

        try:
            batch = batch_from_json(body)
        except ValidationError as exc:
            raise Refused(problems_text(exc)) from None
        try:
            with self._lock:
                if not self._migrated:
                    self.db.upgrade()
                    self._migrated = True
            with self.db.connection() as conn:
                ingest(conn, batch, project=self.project, holdout_fraction=self.holdout_fraction)
        except StoreUnavailable as exc:
            raise RetryLater(str(exc)) from exc
        except NotFound as exc:  # the only NotFound of ingest: a late item naming an unknown trajectory
            raise UnknownTrajectory(str(exc)) from exc
        except (ValidationFailed, Conflict) as exc:
            raise Refused(str(exc)) from exc

    def close(self) -> None:
        self.db.dispose()


class HttpTransport:
    """POSTs batches to ``{server_url}/v1/ingest``; honours 429/503 Retry-After."""

    name = "http"

    def __init__(
        self,
        server_url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        client: httpx.Client | None = None,
    ) -> None:
        import httpx

        self.url = server_url.rstrip("/") + "/v1/ingest"
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = client or httpx.Client(timeout=httpx.Timeout(timeout, connect=5.0), headers=headers)
        self._headers = headers

    def send(self, body: bytes) -> None:
        import httpx

        try:
            r = self._client.post(self.url, content=body, headers=self._headers)
        except httpx.HTTPError as exc:
            raise RetryLater(f"cannot reach {self.url}: {exc}") from exc
        if r.is_success:
            return
        message = _error_text(r)
        if r.status_code in (429, 503):
            retry_after = _retry_after(r.headers.get("Retry-After"))
            raise RetryLater(f"{self.url} answered {r.status_code}: {message}", retry_after)
        if r.status_code in (401, 403):
            # A token problem is fixed by a person, not by the records: keep them spooled.
            log.error(
                "learnloop capture: %s refused the token (%s); set LEARNLOOP_API_TOKEN. "
                "Records stay spooled.",
                self.url,
                message,
            )
            raise TokenRefused(f"{self.url} refused the token ({r.status_code}: {message})")
        if r.status_code in (408, 502, 504):  # timed out, or a proxy in front of a server that is down
            raise RetryLater(f"{self.url} answered {r.status_code}: {message}")
        if r.status_code == 404:  # the ingest route's 404: a late item naming an unknown trajectory
            raise UnknownTrajectory(f"404: {message}")
        if 400 <= r.status_code < 500:
            raise Refused(f"{r.status_code}: {message}")
        # A 500: the server failed on this batch. Not an outage, so the writer retries it a few
        # times and then splits it to find the records that fail.
        raise RuntimeError(f"{self.url} answered {r.status_code}: {message}")

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
    except (ValueError, AttributeError):  # not JSON, or not an object
        return r.text[:500]
