"""What the dashboard's buttons do: write the row a worker or a server obeys, in one transaction
with its event.

The daemon owns what pause/stop *mean* for a running job (it watches ``jobs.desired_state``);
the registry owns promotion. These functions are the one place the dashboard calls, so pointing
them at the daemon's or the registry's own functions is a change here only.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter

from learnloop.config import Settings
from learnloop.errors import Conflict, ValidationFailed, problems_text
from learnloop.store.aliases import DEFAULT_ALIAS, get_alias
from learnloop.store.db import Database


def control_job(db: Database, job_id: int, action: str, *, actor: str = "dashboard") -> dict[str, Any]:
    """Ask job ``job_id`` to pause, resume, stop, skip, cancel or retry (``learnloop.daemon.queue.ACTIONS``).

    It is ``learnloop.daemon.queue.control``, the daemon's own meaning of each action: a job a
    worker holds gets ``desired_state`` and the worker obeys at its next step; a job no worker holds
    changes ``state`` at once. An unknown action is refused there, naming the ones there are.
    """
    from learnloop.daemon import queue

    job = queue.control(db, job_id, action, actor=actor)
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


def set_alias_target(
    db: Database, settings: Settings, alias: str, target: str, *, actor: str = "dashboard"
) -> dict[str, Any]:
    """Point ``alias`` at ``target`` (``upstream:<name>``, ``base`` or a version) through the registry's
    one move, which checks it (an unknown upstream is NotFound; a version's gate holds)."""
    from learnloop.registry import move

    moved = move(db, settings, alias, "set", target, actor=actor, reason="set from the dashboard")
    return {"alias": alias, "target": target, "previous": moved.previous, "changed": moved.changed}


class FeedbackForm(BaseModel):
    """The trajectory page's feedback form, as its script sends it (form fields: empty ones are "")."""

    model_config = ConfigDict(extra="ignore")

    thumbs: Literal["up", "down", ""] | None = None
    rating: float | Literal[""] | None = None
    comment: str | None = None
    correction: str | None = None


_FEEDBACK_FORM = TypeAdapter(FeedbackForm)


def add_feedback(db: Database, settings: Settings, trajectory_id: str, body: bytes) -> dict[str, Any]:
    """Store the feedback the trajectory page's form sent (a JSON object), through the same ingest and
    validation as ``POST /v1/ingest``. A body that is not a JSON object of that shape is refused
    naming what is wrong (Unparsable, ValidationFailed); nothing is stored then."""
    from learnloop.store.records import parse_batch, parse_json_body
    from learnloop.store.trajectories import ingest

    try:
        form = parse_json_body(_FEEDBACK_FORM, body, "feedback form")
    except ValidationFailed as exc:
        what = f"Invalid feedback form — {problems_text(exc.problems)}. Nothing was stored."
        raise ValidationFailed(what, exc.problems) from None
    fb: dict[str, Any] = {"trajectory_id": trajectory_id, "author": "dashboard"}
    if form.thumbs:
        fb["thumbs"] = form.thumbs
    if form.rating not in (None, ""):
        fb["rating"] = form.rating
    for key in ("comment", "correction"):
        text = (getattr(form, key) or "").strip()
        if text:
            fb[key] = text
    batch = parse_batch({"feedback": [fb]})  # the ingest's own checks (a 422 names the field)
    with db.session() as s:
        return ingest(s, batch, project=settings.project).as_dict()
