"""``learnloop loops status``: per configured loop, what the daemon last found and is doing now."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from learnloop.config import Settings
from learnloop.daemon import queue
from learnloop.daemon.locks import check_lock
from learnloop.errors import ConfigError
from learnloop.store.db import Database
from learnloop.store.models import Job, LoopState, utcnow


def status(db: Database, settings: Settings, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Per configured loop: state, last check, next check in s, readiness reasons,
    running job, last outcome."""
    now = now or utcnow()
    with db.read_session() as s:
        rows = {r.name: r for r in s.scalars(select(LoopState))}
        jobs = {
            j.loop: j
            for j in s.scalars(
                select(Job).where(Job.state.in_(queue.ACTIVE), Job.loop.is_not(None)).order_by(Job.id.desc())
            )
        }
        out = []
        for loop in settings.loops:
            row = rows.get(loop.name)
            job = jobs.get(loop.name)
            state = (
                "disabled"
                if not loop.enabled
                else (job.state.value if job is not None else (row.state if row else "new"))
            )
            if state == "queued" and job is None:
                state = "idle"
            lock_error = None
            try:
                check_lock(db, settings, loop)
            except ConfigError as exc:
                lock_error, state = str(exc), "refused"
            out.append(
                {
                    "name": loop.name,
                    "algorithm": loop.algorithm,
                    "state": state,
                    "last_check_at": row.last_check_at.isoformat() if row and row.last_check_at else None,
                    "next_check_in_s": max(0, round((row.next_check_at - now).total_seconds()))
                    if row and row.next_check_at
                    else 0,
                    "ready": (row.readiness or {}).get("ready") if row else None,
                    "reasons": (row.readiness or {}).get("reasons", []) if row else [],
                    # What the next cycle would train, and the backoff, as the last check found them.
                    "next_cycle": (row.readiness or {}).get("plan") if row else None,
                    "backoff": (row.readiness or {}).get("backoff") if row else None,
                    "head_version": row.head_version_id if row else None,
                    "job": None
                    if job is None
                    else {"id": job.id, "state": job.state.value, "progress": job.progress or {}},
                    "last_outcome": (row.last_outcome or None) if row else None,
                    "last_cycle_at": row.last_cycle_at.isoformat() if row and row.last_cycle_at else None,
                    "locked": (row.locked or {}) if row else {},
                    "lock_error": lock_error,
                }
            )
    return out
