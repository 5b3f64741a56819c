"""What the dashboard's buttons do: write the row a worker or a server obeys, in one transaction
with its event.

The daemon owns what pause/stop *mean* for a running job (it watches ``jobs.desired_state``);
the registry owns promotion. These functions are the one place the dashboard calls, so pointing
them at the daemon's or the registry's own functions is a change here only.
"""

from __future__ import annotations

from typing import Any, Literal

from learnloop.config import Settings
from learnloop.errors import Conflict, ValidationFailed
from learnloop.store.aliases import DEFAULT_ALIAS, get_alias
from learnloop.store.db import Database

JobAction = Literal["pause", "resume", "stop", "skip", "cancel"]
JOB_ACTIONS: tuple[str, ...] = ("pause", "resume", "stop", "skip", "cancel")


def control_job(db: Database, job_id: int, action: str, *, actor: str = "dashboard") -> dict[str, Any]:
    """Ask job ``job_id`` to pause, resume, stop, skip or cancel.

    A job a worker holds (running, or paused mid-run: it has a lease) gets ``desired_state``; the
    worker obeys at its next step and writes the new ``state``. A job no worker holds (queued, or
    paused without a lease) changes ``state`` here at once. It is
    ``learnloop.daemon.queue.control``: ``stop`` checkpoints a running job and leaves it paused
    (``resume`` continues it); ``skip`` stops it and requeues it behind the waiting jobs; ``cancel``
    ends it for good.
    """
    if action not in JOB_ACTIONS:
        raise ValidationFailed(
            f"Unknown job action {action!r}; use one of {', '.join(JOB_ACTIONS)}.", [("action", "unknown")]
        )
    from learnloop.daemon import queue

    job = queue.control(db, job_id, action, actor=actor)  # the daemon's own meaning of each action
    return {"id": job.id, "state": job.state, "desired_state": job.desired_state}


def promote_version(
    db: Database,
    settings: Settings,
    version_id: str,
    *,
    alias: str = DEFAULT_ALIAS,
    actor: str = "dashboard",
    reason: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Serve ``version_id`` under ``alias`` through the registry, so its gate holds here too: a version
    the gate rejected (or never evaluated) is a Conflict naming the reason unless ``force``."""
    from learnloop.registry import promote

    moved = promote(
        db,
        settings,
        version_id,
        alias=alias,
        actor=actor,
        force=force,
        reason=reason or ("forced from the dashboard" if force else "promoted from the dashboard"),
    )
    if not moved["changed"]:
        raise Conflict(f"{alias!r} already serves {version_id}.")
    return {"alias": alias, "version": version_id, "previous": moved["previous"], "action": moved["action"]}


def rollback_alias(
    db: Database,
    settings: Settings,
    *,
    alias: str = DEFAULT_ALIAS,
    actor: str = "dashboard",
    reason: str | None = None,
) -> dict[str, Any]:
    """Serve what ``alias`` served before, through the registry: repeated,
    it walks back v3 -> v2 -> v1 -> base."""
    from learnloop.registry import rollback

    current = get_alias(db, alias)
    target = rollback(
        db, settings, alias=alias, actor=actor, reason=reason or "rolled back from the dashboard"
    )
    return {
        "alias": alias,
        "version": target,
        "previous": current.version_id if current is not None else None,
    }
