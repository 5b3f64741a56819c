"""What the dashboard's buttons do: write the row a worker or a server obeys, in one transaction with its event.

The daemon owns what pause/stop *mean* for a running job (it watches ``jobs.desired_state``);
the registry owns promotion. These functions are the one place the dashboard calls, so pointing
them at the daemon's or the registry's own functions is a change here only.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import select

from learnloop.errors import Conflict, NotFound, ValidationFailed
from learnloop.store.aliases import DEFAULT_ALIAS, move_alias
from learnloop.store.db import Database
from learnloop.store.events import record_event
from learnloop.store.models import (
    Alias,
    AliasEvent,
    DesiredState,
    Job,
    JobState,
    ModelVersion,
    VersionState,
    utcnow,
)

JobAction = Literal["pause", "resume", "stop", "skip", "cancel"]
JOB_ACTIONS: tuple[str, ...] = ("pause", "resume", "stop", "skip", "cancel")
_FINISHED = (JobState.succeeded, JobState.failed, JobState.cancelled)


def control_job(db: Database, job_id: int, action: str, *, actor: str = "dashboard") -> dict[str, Any]:
    """Ask job ``job_id`` to pause, resume, stop, skip or cancel.

    A job a worker holds (running, or paused mid-run: it has a lease) gets ``desired_state``; the
    worker obeys at its next step and writes the new ``state``. A job no worker holds (queued, or
    paused without a lease) changes ``state`` here at once. The daemon branch has its own
    ``learnloop.daemon.queue.control(db, job_id, action, actor=)`` with the same contract: when it
    lands, this function should call it. ``stop`` checkpoints and ends a running job (it can be
    resumed later); ``skip`` and ``cancel`` end it for good (``skip`` is a cancel the daemon's loop
    does not count as a failure).
    """
    if action not in JOB_ACTIONS:
        raise ValidationFailed(f"Unknown job action {action!r}; use one of {', '.join(JOB_ACTIONS)}.", [("action", "unknown")])
    with db.session() as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            raise NotFound(f"No job {job_id}.")
        if job.state in _FINISHED:
            raise Conflict(f"Job {job_id} already {job.state.value}; nothing to {action}.")
        # Held: a worker has it (its lease), so only the worker may change its state.
        held = job.lease_owner is not None or job.state == JobState.running
        before = (job.state.value, job.desired_state.value)
        if action == "pause":
            job.desired_state = DesiredState.pause
            if not held:
                job.state = JobState.paused
        elif action == "resume":
            job.desired_state = DesiredState.run
            if job.state == JobState.paused and not held:
                job.state = JobState.queued
        elif action == "stop":
            job.desired_state = DesiredState.stop
            if not held:
                job.state, job.finished_at = JobState.cancelled, utcnow()
        else:  # skip / cancel
            job.desired_state = DesiredState.stop
            if not held:
                job.state, job.finished_at = JobState.cancelled, utcnow()
            job.result = {**(job.result or {}), "cancelled_by": actor, "skipped": action == "skip"}
        record_event(s, "job.control", f"{action} requested for job {job_id} by {actor}", job_id=job_id, loop=job.loop,
                     data={"action": action, "actor": actor, "before": {"state": before[0], "desired_state": before[1]},
                           "after": {"state": job.state.value, "desired_state": job.desired_state.value}})
        return {"id": job.id, "state": job.state.value, "desired_state": job.desired_state.value}


def promote_version(db: Database, version_id: str, *, alias: str = DEFAULT_ALIAS, actor: str = "dashboard",
                    reason: str | None = None) -> dict[str, Any]:
    """Point ``alias`` at ``version_id`` (logged in alias_events) and mark the version serving."""
    with db.session() as s:
        version = s.get(ModelVersion, version_id)
        if version is None:
            raise NotFound(f"No model version {version_id!r}.")
        row = s.get(Alias, alias)
        previous = row.version_id if row is not None else None
        if previous == version_id:
            raise Conflict(f"{alias!r} already serves {version_id}.")
        move_alias(s, alias, version_id, action="promote", actor=actor, reason=reason or "promoted from the dashboard")
        _mark_serving(s, version, previous)
        record_event(s, "version.promoted", f"{version_id} promoted to {alias!r} by {actor}", version_id=version_id,
                     loop=version.loop, data={"alias": alias, "from": previous, "actor": actor})
        return {"alias": alias, "version": version_id, "previous": previous}


def rollback_alias(db: Database, *, alias: str = DEFAULT_ALIAS, actor: str = "dashboard",
                   reason: str | None = None) -> dict[str, Any]:
    """Point ``alias`` back at what it served before its current version (None: the base model)."""
    with db.session() as s:
        row = s.get(Alias, alias)
        if row is None or row.version_id is None:
            raise Conflict(f"{alias!r} serves the base model; there is nothing to roll back.")
        current = row.version_id
        # The move that put the current version in place says what came before it.
        came_in = s.scalars(select(AliasEvent).where(AliasEvent.alias == alias, AliasEvent.to_version == current,
                                                     AliasEvent.action != "split")
                            .order_by(AliasEvent.id.desc()).limit(1)).first()
        target = came_in.from_version if came_in is not None else None
        move_alias(s, alias, target, action="rollback", actor=actor, reason=reason or "rolled back from the dashboard")
        old = s.get(ModelVersion, current)
        if old is not None:
            old.state = VersionState.archived
        if target is not None and (new := s.get(ModelVersion, target)) is not None:
            new.state = VersionState.serving
        record_event(s, "version.rolled_back", f"{alias!r} rolled back from {current} to {target or 'base'} by {actor}",
                     level="warning", version_id=current, data={"alias": alias, "from": current, "to": target, "actor": actor})
        return {"alias": alias, "version": target, "previous": current}


def _mark_serving(s: Any, version: ModelVersion, previous: str | None) -> None:
    version.state = VersionState.serving
    version.ever_served = True
    version.promoted_at = utcnow()
    if previous and previous != version.id and (old := s.get(ModelVersion, previous)) is not None:
        old.state = VersionState.archived
