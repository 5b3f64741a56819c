"""A loop's cycles so far, as its jobs record them: the last one, the running one, failures in a row."""

from __future__ import annotations

import datetime as dt
from typing import Any

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
            select(Job.state, Job.finished_at, Job.result)
            .where(Job.loop == loop, Job.kind == JobKind.train, Job.finished_at.is_not(None))
            .order_by(Job.finished_at.desc(), Job.id.desc())
            .limit(20)
        ).all()
    n = 0
    for state, _, result in rows:
        # A cycle without a learning signal is the backoff's business (quiet_cycles), not a crash's.
        if state != JobState.failed or no_signal_failure(result):
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


def quiet_cycles(db: Database, loop: str) -> tuple[int, dt.datetime | None, list[str]]:
    """How many of the loop's newest finished cycles improved nothing, in a row, when the last of them
    ended, and why each was quiet: a gate that rejected the candidate (no improvement, or a
    regression), or no learning signal at all."""
    with db.read_session() as s:
        rows = s.execute(
            select(Job.state, Job.finished_at, Job.result)
            .where(Job.loop == loop, Job.kind == JobKind.train, Job.finished_at.is_not(None))
            .order_by(Job.finished_at.desc(), Job.id.desc())
            .limit(20)
        ).all()
    why: list[str] = []
    last: dt.datetime | None = None
    for state, finished, result in rows:
        result = result or {}
        if state == JobState.cancelled:
            continue
        if state == JobState.failed and result.get("no_signal"):
            why.append("no learning signal")
        elif state == JobState.succeeded and (result.get("gate") or {}).get("verdict") == "reject":
            # The gate decided: no improvement (an inconclusive gate, e.g. nothing to evaluate on,
            # says nothing about whether training helps, and a promotion ends the run).
            why.append("gate rejected the candidate")
        else:
            break
        last = last or finished
    return len(why), last, why


def no_signal_failure(result: dict[str, Any] | None) -> bool:
    """Whether a failed cycle failed for want of a learning signal (not retried; the backoff waits)."""
    return bool((result or {}).get("no_signal"))
