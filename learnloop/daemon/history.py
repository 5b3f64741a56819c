"""A loop's cycles so far, as its jobs record them: the last one, the running one, failures in a row."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from learnloop.config.loops import LoopConfig
from learnloop.daemon import queue
from learnloop.store.db import Database
from learnloop.store.models import Job, JobKind, JobState


def last_cycle(db: Database, loop: str) -> Job | None:
    """The loop's newest succeeded cycle job (its payload's ``until`` is the next one's ``since``)."""
    with db.read_session() as s:
        return s.scalars(
            select(Job)
            .where(Job.loop == loop, Job.kind == JobKind.train, Job.state == JobState.succeeded)
            .order_by(Job.finished_at.desc(), Job.id.desc())
            .limit(1)
        ).first()


def active_job(db: Database, loop: str) -> Job | None:
    with db.read_session() as s:
        return s.scalars(
            select(Job).where(Job.loop == loop, Job.state.in_(queue.ACTIVE)).order_by(Job.id).limit(1)
        ).first()


def failed_cycles(db: Database, loop: str) -> tuple[int, dt.datetime | None]:
    """How many of the loop's newest finished cycles failed in a row, and when the last one ended."""
    with db.read_session() as s:
        rows = s.execute(
            select(Job.state, Job.finished_at)
            .where(Job.loop == loop, Job.kind == JobKind.train, Job.finished_at.is_not(None))
            .order_by(Job.finished_at.desc(), Job.id.desc())
            .limit(20)
        ).all()
    n = 0
    for state, _ in rows:
        if state != JobState.failed:
            break
        n += 1
    return n, (rows[0][1] if n else None)


def since_of(db: Database, loop: LoopConfig) -> dt.datetime | None:
    """Where the next cycle's data starts: the last cycle's ``until`` for an incremental loop, else None."""
    if not loop.incremental:
        return None
    prev = last_cycle(db, loop.name)
    until = (prev.payload or {}).get("until") if prev else None
    return dt.datetime.fromisoformat(until) if until else None
