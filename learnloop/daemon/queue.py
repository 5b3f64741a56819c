"""The job queue on the ``jobs`` table: submit, claim, leases, retries, and the person's controls.

A claim is one statement on both databases::

    UPDATE jobs SET state='running', lease_owner=:me, ... WHERE state='queued' AND id =
      (SELECT id FROM jobs WHERE state='queued' AND run_after <= :now
       ORDER BY priority, run_after, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING ...

PostgreSQL skips rows another daemon is claiming; SQLAlchemy drops the lock clause on SQLite,
whose single writer (``BEGIN IMMEDIATE``) makes the statement atomic. Ordering by ``run_after``
inside a priority keeps FIFO for new jobs (``run_after`` = submit time) and sends a retried or
skipped job behind the ones already waiting.

Times come from the daemon's clock: hosts sharing a database need synchronised clocks (NTP).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from learnloop.config.loops import PRIORITIES
from learnloop.daemon.log import emit
from learnloop.errors import Conflict, NotFound, ValidationFailed
from learnloop.store.db import Database
from learnloop.store.models import DesiredState, Job, JobKind, JobState, utcnow

ACTIVE = (JobState.queued, JobState.running, JobState.paused)
FINISHED = (JobState.succeeded, JobState.failed, JobState.cancelled)
# What a person may ask of a job: the one list the CLI, the API and the dashboard offer.
JobAction = Literal["pause", "resume", "stop", "skip", "cancel", "retry"]
ACTIONS: tuple[str, ...] = get_args(JobAction)


def priority_value(priority: str | int) -> int:
    if isinstance(priority, int):
        return priority
    try:
        return PRIORITIES[priority]
    except KeyError:
        raise ValidationFailed(
            f"Unknown priority {priority!r}; use high, normal or low.", [("priority", "unknown")]
        ) from None


def priority_name(value: int) -> str:
    for name, v in PRIORITIES.items():
        if value == v:
            return name
    return str(value)


@dataclass
class JobInfo:
    """A job as the CLI, the API and the worker see it (never the ORM row)."""

    id: int
    kind: str
    state: str
    desired_state: str
    priority: str
    loop: str | None
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    progress: dict[str, Any]
    result: dict[str, Any]
    error: str | None
    output_tail: str | None
    checkpoint_path: str | None
    idempotency_key: str | None
    lease_owner: str | None
    lease_expires_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    run_after: dt.datetime
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None

    @classmethod
    def of(cls, row: Job) -> JobInfo:
        return cls(
            id=row.id,
            kind=_v(row.kind),
            state=_v(row.state),
            desired_state=_v(row.desired_state),
            priority=priority_name(row.priority),
            loop=row.loop,
            payload=dict(row.payload or {}),
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            progress=dict(row.progress or {}),
            result=dict(row.result or {}),
            error=row.error,
            output_tail=row.output_tail,
            checkpoint_path=row.checkpoint_path,
            idempotency_key=row.idempotency_key,
            lease_owner=row.lease_owner,
            lease_expires_at=row.lease_expires_at,
            heartbeat_at=row.heartbeat_at,
            run_after=row.run_after,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )

    def as_dict(self, *, brief: bool = False, now: dt.datetime | None = None) -> dict[str, Any]:
        """The job as every caller shows it (CLI, API, status, dashboard): its fields, and read from its
        progress the step, total steps, loss, tokens/s, an ETA and how long it has run. ``brief``
        leaves out the payload, the result and the output."""
        data = {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in vars(self).items()}
        if brief:
            for k in ("payload", "result", "output_tail"):
                data.pop(k)
        data.update(self._progress_view(now or utcnow()))
        return data

    def _progress_view(self, now: dt.datetime) -> dict[str, Any]:
        p = self.progress
        step, total = p.get("step"), p.get("total_steps")
        stage = p.get("stage") or ("training" if step is not None else None)
        training = stage == "training"
        eta = _finite(p.get("eta_s")) if training else None
        if (
            training
            and eta is None
            and self.state == "running"
            and self.started_at
            and step
            and total
            and step > 0
        ):
            # No ETA reported: extrapolate from the pace so far.
            elapsed = (now - self.started_at).total_seconds()
            eta = round(elapsed / step * max(0, total - step), 1)
        duration = None
        if self.started_at:
            duration = round(((self.finished_at or now) - self.started_at).total_seconds(), 1)
        return {
            "stage": stage if self.state in ("running", "paused") else None,
            "stage_label": STAGES.get(stage or "", stage) if self.state in ("running", "paused") else None,
            "stage_done": p.get("stage_done"),
            "stage_total": p.get("stage_total"),
            "step": step,
            "total_steps": total,
            "loss": _finite(p.get("loss")),
            "tokens_per_s": _finite(p.get("tokens_per_s")),
            "eta_s": eta,
            "duration_s": duration,
        }


def _finite(v: Any) -> float | None:
    """A JSON-safe float: NaN, infinities and non-numbers become None (JSON has no NaN)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _v(x: Any) -> Any:
    return getattr(x, "value", x)


def submit(
    db: Database,
    kind: str,
    payload: dict[str, Any] | None = None,
    *,
    priority: str | int = "normal",
    loop: str | None = None,
    idempotency_key: str | None = None,
    max_attempts: int = 3,
    run_after: dt.datetime | None = None,
) -> tuple[JobInfo, bool]:
    """Queue a job; returns (job, created). A known idempotency key returns the job it queued before."""
    try:
        job_kind = JobKind(kind)
    except ValueError:
        raise ValidationFailed(
            f"Unknown job kind {kind!r}; use one of {', '.join(k.value for k in JobKind)}.",
            [("kind", "unknown")],
        ) from None
    if max_attempts < 1:
        raise ValidationFailed("max_attempts must be at least 1.", [("max_attempts", "must be >= 1")])
    prio = priority_value(priority)
    if idempotency_key:
        existing = _by_key(db, idempotency_key)
        if existing is not None:
            return existing, False
    now = utcnow()
    try:
        with db.session() as s:
            row = Job(
                kind=job_kind,
                payload=payload or {},
                priority=prio,
                loop=loop,
                idempotency_key=idempotency_key,
                max_attempts=max_attempts,
                run_after=run_after or now,
                created_at=now,
                state=JobState.queued,
                desired_state=DesiredState.run,
                attempts=0,
                progress={},
                result={},
            )
            s.add(row)
            s.flush()
            emit(
                s,
                "job.queued",
                f"{job_kind.value} job {row.id} queued ({priority_name(prio)})",
                loop=loop,
                job_id=row.id,
                data={"priority": priority_name(prio), "idempotency_key": idempotency_key},
            )
            info = JobInfo.of(row)
    except Conflict:
        # Another process queued the same key between our look-up and insert: theirs stands.
        existing = _by_key(db, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return existing, False
    return info, True


def _by_key(db: Database, key: str) -> JobInfo | None:
    with db.read_session() as s:
        row = s.scalars(select(Job).where(Job.idempotency_key == key)).first()
        return JobInfo.of(row) if row else None


def claim(
    db: Database, owner: str, *, lease_seconds: float, kinds: list[str] | None = None
) -> JobInfo | None:
    """Take the first runnable job (priority, then FIFO) with a lease; None when there is none."""
    now = utcnow()
    pick = (
        select(Job.id)
        .where(Job.state == JobState.queued, Job.run_after <= now)
        .order_by(Job.priority, Job.run_after, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if kinds:
        pick = pick.where(Job.kind.in_([JobKind(k) for k in kinds]))
    stmt = (
        update(Job)
        .where(Job.id == pick.scalar_subquery(), Job.state == JobState.queued)
        .values(
            state=JobState.running,
            desired_state=DesiredState.run,
            lease_owner=owner,
            lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, now),
        )
        .returning(Job)
        .execution_options(synchronize_session=False)
    )
    with db.session() as s:
        row = s.scalars(stmt).first()
        if row is None:
            return None
        emit(
            s,
            "job.started",
            f"{_v(row.kind)} job {row.id} started by {owner} (attempt {row.attempts}/{row.max_attempts})",
            loop=row.loop,
            job_id=row.id,
            data={"owner": owner, "attempt": row.attempts},
        )
        return JobInfo.of(row)


def get_job(db: Database, job_id: int) -> JobInfo:
    with db.read_session() as s:
        row = s.get(Job, job_id)
        if row is None:
            raise NotFound(f"No job with id {job_id}. `learnloop jobs list` shows the jobs.")
        return JobInfo.of(row)


def list_jobs(
    db: Database, *, state: str | None = None, loop: str | None = None, limit: int = 50
) -> list[JobInfo]:
    """Newest first."""
    stmt = select(Job).order_by(Job.id.desc()).limit(limit)
    if state:
        try:
            stmt = stmt.where(Job.state == JobState(state))
        except ValueError:
            raise ValidationFailed(
                f"Unknown job state {state!r}; use one of {', '.join(s.value for s in JobState)}.",
                [("state", "unknown")],
            ) from None
    if loop:
        stmt = stmt.where(Job.loop == loop)
    with db.read_session() as s:
        return [JobInfo.of(r) for r in s.scalars(stmt)]


# -- what the worker holding the lease calls ------------------------------------------------------


def _owned(s: Session, job_id: int, owner: str) -> Job | None:
    row = s.get(Job, job_id, with_for_update=s.get_bind().dialect.name == "postgresql")
    if row is None or row.lease_owner != owner or row.state not in (JobState.running, JobState.paused):
        return None
    return row


def heartbeat(
    db: Database,
    job_id: int,
    owner: str,
    *,
    lease_seconds: float,
    progress: dict[str, Any] | None = None,
    state: JobState | None = None,
    checkpoint_path: str | None = None,
) -> JobInfo | None:
    """Renew the lease (and record progress); None when the lease is no longer ours (stop working on it)."""
    now = utcnow()
    with db.session() as s:
        row = _owned(s, job_id, owner)
        if row is None:
            return None
        row.heartbeat_at = now
        row.lease_expires_at = now + dt.timedelta(seconds=lease_seconds)
        if progress is not None:
            row.progress = progress
        if state is not None:
            row.state = state
        if checkpoint_path is not None:
            row.checkpoint_path = checkpoint_path
        return JobInfo.of(row)


# A cycle's stages in order, with the words the CLI and the dashboard show while it is in one.
STAGES = {
    "dataset": "building the dataset",
    "training": "training",
    "registering": "registering the version",
    "evaluating": "evaluating",
    "gate": "gate verdict",
    "promoting": "promoting",
}


def set_stage(
    db: Database, job_id: int, owner: str, stage: str, *, done: int | None = None, total: int | None = None
) -> bool:
    """Record which stage the running job is in (and how far through it: ``done`` of ``total``)."""
    with db.session() as s:
        row = _owned(s, job_id, owner)
        if row is None:
            return False
        row.progress = {**(row.progress or {}), "stage": stage, "stage_done": done, "stage_total": total}
        return True


def update_result(db: Database, job_id: int, owner: str, **fields: Any) -> bool:
    """Merge ``fields`` into the job's result (a finished cycle stage);
    committed before the next stage starts."""
    with db.session() as s:
        row = _owned(s, job_id, owner)
        if row is None:
            return False
        row.result = {**(row.result or {}), **fields}
        return True


def succeed(
    db: Database, job_id: int, owner: str, result: dict[str, Any] | None = None, message: str = ""
) -> bool:
    with db.session() as s:
        row = _owned(s, job_id, owner)
        if row is None:
            return False
        row.state, row.finished_at, row.lease_owner, row.lease_expires_at = (
            JobState.succeeded,
            utcnow(),
            None,
            None,
        )
        row.desired_state, row.error = DesiredState.run, None
        if result:
            row.result = {**(row.result or {}), **result}
        emit(
            s,
            "job.succeeded",
            message or f"{_v(row.kind)} job {row.id} succeeded",
            loop=row.loop,
            job_id=row.id,
            version_id=(row.result or {}).get("version_id"),
        )
        return True


def backoff_seconds(attempts: int, base: float, cap: float) -> float:
    """Exponential: base, 2 base, 4 base ... capped."""
    return min(cap, base * (2 ** max(0, attempts - 1)))


def fail(
    db: Database,
    job_id: int,
    owner: str,
    error: str,
    *,
    output_tail: str | None = None,
    retry: bool = True,
    backoff: float = 30.0,
    backoff_max: float = 3600.0,
) -> str:
    """Record a failed attempt: requeue with backoff while attempts remain (and ``retry``),
    else fail for good.

    Returns the new state ('queued' or 'failed'; '' when the lease was no longer ours).
    """
    now = utcnow()
    with db.session() as s:
        row = _owned(s, job_id, owner)
        if row is None:
            return ""
        row.error, row.lease_owner, row.lease_expires_at = error, None, None
        if output_tail is not None:
            row.output_tail = output_tail
        if retry and row.attempts < row.max_attempts:
            wait = backoff_seconds(row.attempts, backoff, backoff_max)
            row.state, row.desired_state, row.run_after = (
                JobState.queued,
                DesiredState.run,
                now + dt.timedelta(seconds=wait),
            )
            emit(
                s,
                "job.retried",
                f"job {row.id} attempt {row.attempts}/{row.max_attempts} failed ({_first_line(error)}); "
                f"retry in {wait:.0f} s",
                level="warning",
                loop=row.loop,
                job_id=row.id,
                data={"error": error, "attempt": row.attempts, "retry_in_s": wait},
            )
            return JobState.queued.value
        row.state, row.finished_at = JobState.failed, now
        emit(
            s,
            "job.failed",
            f"job {row.id} failed after {row.attempts} attempt(s): {_first_line(error)}",
            level="error",
            loop=row.loop,
            job_id=row.id,
            data={"error": error, "attempts": row.attempts},
        )
        return JobState.failed.value


def release(db: Database, job_id: int, owner: str, *, reason: str) -> str:
    """The worker stops holding the job without it having failed (stop, skip, cancel, daemon shutdown).

    The desired state says where it goes: stop -> paused (``jobs resume`` continues it), skip -> queued
    behind the waiting jobs, cancel -> cancelled, run (a daemon shutting down) -> queued as it was.
    An attempt not failed by the job itself is not counted.
    """
    now = utcnow()
    with db.session() as s:
        row = _owned(s, job_id, owner)
        if row is None:
            return ""
        want = row.desired_state
        row.lease_owner, row.lease_expires_at = None, None
        row.attempts = max(0, row.attempts - 1)
        if want == DesiredState.cancel:
            row.state, row.finished_at = JobState.cancelled, now
            kind, msg = "job.cancelled", f"job {row.id} cancelled"
        elif want == DesiredState.stop or want == DesiredState.pause:
            row.state = JobState.paused
            row.desired_state = DesiredState.pause
            kind, msg = (
                "job.stopped",
                f"job {row.id} stopped at step {(row.progress or {}).get('step', 0)}; "
                f"`learnloop jobs resume {row.id}` continues it",
            )
        elif want == DesiredState.skip:
            row.state, row.desired_state, row.run_after = JobState.queued, DesiredState.run, now
            kind, msg = (
                "job.skipped",
                f"job {row.id} skipped: requeued behind the waiting jobs (checkpoint kept)",
            )
        else:
            row.state, row.desired_state = JobState.queued, DesiredState.run
            kind, msg = "job.released", f"job {row.id} released ({reason}); it resumes from its checkpoint"
        emit(s, kind, msg, loop=row.loop, job_id=row.id, data={"reason": reason})
        return _v(row.state)


def reap(db: Database, *, stall_seconds: float | None = None) -> list[int]:
    """Take back jobs whose lease expired (their daemon died or hung): running -> queued, paused stays paused.

    ``stall_seconds``: a running job whose heartbeat is older than this is taken back too,
    whatever its lease says.
    """
    now = utcnow()
    cond = Job.lease_expires_at < now
    if stall_seconds is not None:
        cond = cond | (Job.heartbeat_at < now - dt.timedelta(seconds=stall_seconds))
    taken: list[int] = []
    with db.session() as s:
        lock = {"with_for_update": {"skip_locked": True}} if s.get_bind().dialect.name == "postgresql" else {}
        stmt = select(Job).where(
            Job.state.in_([JobState.running, JobState.paused]), Job.lease_owner.is_not(None), cond
        )
        if lock:
            stmt = stmt.with_for_update(skip_locked=True)
        for row in s.scalars(stmt):
            owner = row.lease_owner
            row.lease_owner, row.lease_expires_at = None, None
            # Its daemon died: not the job's fault, so the attempt is not counted.
            row.attempts = max(0, row.attempts - 1)
            if row.state == JobState.running:
                row.state = JobState.queued
                row.desired_state = (
                    DesiredState.run
                    if row.desired_state in (DesiredState.run, DesiredState.skip)
                    else row.desired_state
                )
            if row.desired_state == DesiredState.cancel:
                row.state, row.finished_at = JobState.cancelled, now
            outcome = (
                "requeued to resume from its checkpoint" if row.state == JobState.queued else _v(row.state)
            )
            emit(
                s,
                "job.stalled",
                f"job {row.id}: lease of {owner} expired (heartbeat {row.heartbeat_at:%H:%M:%S}); {outcome}",
                level="warning",
                loop=row.loop,
                job_id=row.id,
                data={"owner": owner},
            )
            taken.append(row.id)
    return taken


# -- what a person asks for (CLI, API) -----------------------------------------------------------


def control(db: Database, job_id: int, action: str, *, actor: str | None = None) -> JobInfo:
    """pause | resume | stop | skip | cancel | retry. Running jobs act on it within one training step."""
    if action not in ACTIONS:
        raise ValidationFailed(
            f"Unknown action {action!r}; use one of {', '.join(ACTIONS)}.", [("action", "unknown")]
        )
    now = utcnow()
    with db.session() as s:
        row = s.get(Job, job_id, with_for_update=s.get_bind().dialect.name == "postgresql")
        if row is None:
            raise NotFound(f"No job with id {job_id}. `learnloop jobs list` shows the jobs.")
        state, held = row.state, row.lease_owner is not None
        refuse = _refusal(action, state, held)
        if refuse:
            raise Conflict(f"Job {job_id} {'already' if state in FINISHED else 'is'} {_v(state)}: {refuse}")
        note = ""
        if action == "pause":
            row.desired_state = DesiredState.pause
            if not held:
                row.state = JobState.paused
        elif action == "resume":
            row.desired_state = DesiredState.run
            if not held:
                row.state, row.run_after = JobState.queued, min(row.run_after, now)
        elif action in ("stop", "skip"):
            row.desired_state = DesiredState(action)
            if not held:
                if action == "stop":
                    row.state = JobState.paused
                else:
                    row.state, row.desired_state, row.run_after = JobState.queued, DesiredState.run, now
        elif action == "cancel":
            row.desired_state = DesiredState.cancel
            if not held:
                row.state, row.finished_at = JobState.cancelled, now
        elif action == "retry":
            row.state, row.desired_state, row.run_after = JobState.queued, DesiredState.run, now
            row.finished_at, row.error = None, None
            row.max_attempts = max(row.max_attempts, row.attempts + 1)
            note = f" (attempt {row.attempts + 1} of {row.max_attempts})"
        # A running job acts on it at its next step; the worker records the transition when it happens.
        kind = (
            f"job.{action}_requested"
            if held
            else {
                "pause": "job.paused",
                "resume": "job.resumed",
                "stop": "job.stopped",
                "skip": "job.skipped",
                "cancel": "job.cancelled",
                "retry": "job.queued",
            }[action]
        )
        emit(
            s,
            kind,
            f"job {job_id}: {action} requested{' by ' + actor if actor else ''}{note}",
            loop=row.loop,
            job_id=job_id,
            data={"action": action, "actor": actor, "running": held},
        )
        s.flush()
        return JobInfo.of(row)


def _refusal(action: str, state: JobState, held: bool) -> str | None:
    if action == "retry":
        return (
            None
            if state in (JobState.failed, JobState.cancelled)
            else "only failed or cancelled jobs can be retried."
        )
    if state in FINISHED:
        return (
            "it has finished; `learnloop jobs retry` queues it again."
            if state != JobState.succeeded
            else "it has finished."
        )
    if action == "resume" and state != JobState.paused:
        return "only a paused job can be resumed."
    if action == "pause" and state == JobState.paused:
        return "it is paused already."
    if action in ("stop", "skip") and state == JobState.paused and not held:
        return "it is not running; `learnloop jobs cancel` ends it, `resume` continues it."
    return None


def _first_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "unknown error"


def get_control(db: Database, key: str) -> bool:
    from learnloop.store.models import Control

    with db.read_session() as s:
        row = s.get(Control, key)
        return bool(row and (row.value or {}).get("on"))


def set_control(db: Database, key: str, on: bool, *, actor: str | None = None) -> bool:
    """Flip a switch (``daemon.paused``, ``daemon.frozen``); returns whether it changed."""
    from learnloop.store.models import Control

    name = key.split(".", 1)[-1]
    kind = f"daemon.{name if on else {'paused': 'resumed', 'frozen': 'unfrozen'}.get(name, 'un' + name)}"
    with db.session() as s:
        row = s.get(Control, key, with_for_update=s.get_bind().dialect.name == "postgresql")
        before = bool(row and (row.value or {}).get("on"))
        if row is None:
            row = Control(key=key, value={})
            s.add(row)
        row.value, row.updated_at = {"on": on, "by": actor}, utcnow()
        if before != on:
            emit(
                s,
                kind,
                f"{key} {'on' if on else 'off'}{' by ' + actor if actor else ''}",
                data={"actor": actor},
            )
        return before != on
