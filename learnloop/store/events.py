"""The event log: what happened, for people (dashboard, `learnloop events`) and for alerts."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from learnloop.masking import redact
from learnloop.store.db import Database
from learnloop.store.models import Event


def record_event(
    target: Database | Session,
    kind: str,
    message: str = "",
    *,
    level: str = "info",
    loop: str | None = None,
    job_id: int | None = None,
    version_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Append one event. Given a session, it joins that transaction,
    so the event commits with the change it describes."""
    # Events are shown to anyone who may read the dashboard: no configured secret goes in.
    row = Event(
        kind=kind,
        message=redact(message),
        level=level,
        loop=loop,
        job_id=job_id,
        version_id=version_id,
        data={k: redact(v) if isinstance(v, str) else v for k, v in (data or {}).items()},
    )
    if isinstance(target, Session):
        target.add(row)
        return
    with target.session() as session:
        session.add(row)


def recent_events(
    db: Database,
    *,
    limit: int = 100,
    kinds: list[str] | None = None,
    since: dt.datetime | None = None,
    after_id: int | None = None,
    job_id: int | None = None,
) -> list[Event]:
    """Newest first; ``after_id`` reads only events newer than one already seen
    (for live views and alerts)."""
    query = select(Event).order_by(Event.id.desc()).limit(limit)
    if kinds:
        query = query.where(Event.kind.in_(kinds))
    if since is not None:
        query = query.where(Event.created_at >= since)
    if after_id is not None:
        query = query.where(Event.id > after_id)
    if job_id is not None:
        query = query.where(Event.job_id == job_id)
    with db.read_session() as session:
        return list(session.scalars(query))
