"""A loop's checks and cycles: whether one is due, what it would do now, queueing it, recording it.

``check_loop`` composes the registered readiness checks (``readiness.py``) and triggers
(``triggers.py``) over one :class:`~learnloop.daemon.checks.LoopCheck`; what they count comes from
``tally.py``, the loop's past cycles from ``history.py``. Config locks live in ``locks.py`` and
``learnloop loops status`` in ``status.py``; this module also names them, as the one surface the
CLI, the API and the daemon use. The cycle job's idempotency key is ``loop:<name>:cycle:<n>``, so
two daemons checking at once queue it once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from learnloop.config import Settings
from learnloop.config.loops import LoopConfig, base_model_of
from learnloop.daemon import queue
from learnloop.daemon.checks import LoopCheck
from learnloop.daemon.history import active_job, failed_cycles, last_cycle, since_of
from learnloop.daemon.locks import chat_template_hash, check_lock, check_locks, lock_values
from learnloop.daemon.log import emit
from learnloop.daemon.plan import plan, rollout_scoring
from learnloop.daemon.readiness import READINESS, Check
from learnloop.daemon.status import status
from learnloop.daemon.tally import dataset_filters
from learnloop.daemon.triggers import TRIGGERS
from learnloop.errors import Conflict, NotFound
from learnloop.paths import data_dir
from learnloop.store.db import Database
from learnloop.store.models import Job, JobKind, LoopState, utcnow

__all__ = [
    "Check",
    "Decision",
    "active_job",
    "base_model_of",
    "chat_template_hash",
    "check_and_submit",
    "check_lock",
    "check_locks",
    "check_loop",
    "check_registered",
    "dataset_filters",
    "due",
    "ensure_row",
    "failed_cycles",
    "get_loop",
    "head_adapter",
    "last_cycle",
    "lock_values",
    "next_due_in",
    "plan",
    "record_cycle",
    "rollout_scoring",
    "set_state",
    "status",
    "submit_cycle",
]


@dataclass
class Decision:
    loop: str
    fire: bool
    ready: bool
    new_examples: int
    triggers: list[str] = field(default_factory=list)  # what would fire it
    checks: list[Check] = field(default_factory=list)
    since: str | None = None
    plan: dict[str, Any] | None = None  # what the next cycle would train (algorithm, examples, steps)
    backoff: dict[str, Any] | None = None  # why and how long the loop waits after quiet cycles

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks] + self.triggers

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = self.reasons
        return d


def get_loop(settings: Settings, name: str) -> LoopConfig:
    for loop in settings.loops:
        if loop.name == name:
            return loop
    names = ", ".join(lp.name for lp in settings.loops) or "none configured"
    raise NotFound(f"No loop named {name!r} in learnloop.toml ([[loops]]: {names}).")


def check_registered(settings: Settings) -> None:
    """Refuse a loop that names a custom trigger or readiness check no module registers."""
    for loop in settings.loops:
        READINESS.for_loop(settings, loop.triggers.custom_checks)
        TRIGGERS.for_loop(settings, loop.triggers.custom)


def check_loop(
    db: Database,
    settings: Settings,
    loop: LoopConfig,
    *,
    now: dt.datetime | None = None,
    last_cycle_at: dt.datetime | None = None,
) -> Decision:
    """What the loop would do now, with every reason: every readiness check, then every trigger."""
    now = now or utcnow()
    since = since_of(db, loop)
    check = LoopCheck(db, settings, loop, now, last_cycle_at, since)
    d = Decision(
        loop=loop.name,
        fire=False,
        ready=True,
        new_examples=check.new_examples,
        since=since.isoformat() if since else None,
    )
    for entry in READINESS.for_loop(settings, loop.triggers.custom_checks):
        result = entry.fn(check)
        if result is not None:
            ok, reason = result
            d.checks.append(Check(entry.name, bool(ok), str(reason)))
    d.ready = all(c.ok for c in d.checks)
    d.plan, d.backoff = check.notes.get("plan"), check.notes.get("backoff")
    for entry in TRIGGERS.for_loop(settings, loop.triggers.custom):
        reason = entry.fn(check)
        if reason:
            d.triggers.append(str(reason))
    d.fire = d.ready and bool(d.triggers)
    return d


def ensure_row(db: Database, name: str) -> None:
    with db.session() as s:
        if s.get(LoopState, name) is None:
            s.add(LoopState(name=name, state="idle", locked={}, readiness={}, last_outcome={}))
    # A concurrent daemon inserting the same name raises Conflict; callers catch and move on.


def due(db: Database, settings: Settings, now: dt.datetime | None = None) -> list[LoopConfig]:
    now = now or utcnow()
    out = []
    with db.read_session() as s:
        rows = {r.name: r for r in s.scalars(select(LoopState))}
    for loop in settings.loops:
        row = rows.get(loop.name)
        if loop.enabled and (row is None or row.next_check_at is None or row.next_check_at <= now):
            out.append(loop)
    return out


def next_due_in(db: Database, settings: Settings, now: dt.datetime | None = None) -> float | None:
    now = now or utcnow()
    with db.read_session() as s:
        times = [r.next_check_at for r in s.scalars(select(LoopState)) if r.next_check_at is not None]
    names = {lp.name for lp in settings.loops if lp.enabled}
    if not names:
        return None
    if not times:
        return 0.0
    return max(0.0, min((t - now).total_seconds() for t in times))


def check_and_submit(
    db: Database,
    settings: Settings,
    loop: LoopConfig,
    *,
    manual: bool = False,
    actor: str | None = None,
    now: dt.datetime | None = None,
) -> tuple[Decision | None, queue.JobInfo | None]:
    """Check one loop and queue its next cycle when it fires (or when ``manual``); records the decision."""
    now = now or utcnow()
    try:
        ensure_row(db, loop.name)
    except Conflict:
        pass
    check_lock(db, settings, loop)
    with db.read_session() as s:
        row = s.get(LoopState, loop.name)
        last_at = row.last_cycle_at if row else None
        was = dict(row.readiness or {}) if row else {}
        was_busy = was.get("busy_job")
    busy = active_job(db, loop.name)
    if busy is not None:
        if manual:
            raise Conflict(
                f"Loop {loop.name!r} already has job {busy.id} ({busy.state.value}); "
                f"`learnloop jobs show {busy.id}` follows it."
            )
        # One cycle at a time: the next one counts from where this one ends, so there is nothing to check yet.
        if was_busy != busy.id:
            emit(
                db,
                "trigger.skipped",
                f"loop {loop.name}: not checked while job {busy.id} is {busy.state.value}",
                loop=loop.name,
                job_id=busy.id,
            )
        with db.session() as s:
            row = s.get(LoopState, loop.name)
            row.last_check_at, row.updated_at = now, now
            row.next_check_at = now + dt.timedelta(seconds=loop.triggers.check_interval)
            row.readiness = {
                **(row.readiness or {}),
                "busy_job": busy.id,
                "reasons": [f"cycle job {busy.id} is {busy.state.value}"],
                "checked_at": now.isoformat(),
            }
        return None, None
    decision = None if manual else check_loop(db, settings, loop, now=now, last_cycle_at=last_at)
    job = None
    if manual or (decision and decision.fire):
        job = submit_cycle(
            db,
            settings,
            loop,
            now=now,
            reason=f"manual ({actor})" if manual else "; ".join(decision.triggers),
        )
    elif decision is not None and _waits_anew(decision, was):
        emit(
            db,
            "trigger.skipped",
            f"loop {loop.name}: "
            + "; ".join(c.reason for c in decision.checks if not c.ok or c.name == "new_examples"),
            loop=loop.name,
            data={"reasons": decision.reasons, "new_examples": decision.new_examples},
        )
    with db.session() as s:
        row = s.get(LoopState, loop.name)
        row.last_check_at = now
        row.next_check_at = now + dt.timedelta(seconds=loop.triggers.check_interval)
        if decision is not None:
            row.readiness = {
                "ready": decision.ready,
                "fire": decision.fire,
                "new_examples": decision.new_examples,
                "reasons": decision.reasons,
                "checks": [asdict(c) for c in decision.checks],
                "triggers": decision.triggers,
                "plan": decision.plan,
                "backoff": decision.backoff,
                "checked_at": now.isoformat(),
            }
        if job is not None:
            row.state = "queued"
        row.updated_at = now
    return decision, job


def _holding(checks: list[Any], triggers: list[str], new_examples: int) -> tuple[Any, ...]:
    """What holds the loop back, without the numbers (a count or a countdown that moves is not news):
    the failed checks by name, whether a trigger would fire, whether anything new came in."""
    failed = sorted(
        str(c.get("name"))
        for c in (c if isinstance(c, dict) else asdict(c) for c in checks)
        if not c.get("ok")
    )
    return (failed, bool(triggers), new_examples > 0)


def _waits_anew(decision: Decision, was: dict[str, Any]) -> bool:
    """Whether a decision not to fire is news for the log: the first check, the first after a cycle,
    or a change in what holds the loop back (not every check's repeat, every few seconds)."""
    if "checks" not in was or was.get("busy_job") is not None or was.get("fire"):
        return True
    now = _holding(decision.checks, decision.triggers, decision.new_examples)
    return now != _holding(was["checks"], was.get("triggers") or [], int(was.get("new_examples") or 0))


def submit_cycle(
    db: Database, settings: Settings, loop: LoopConfig, *, now: dt.datetime, reason: str
) -> queue.JobInfo:
    since = since_of(db, loop)
    with db.read_session() as s:
        n = 1 + (
            s.scalar(
                select(func.count()).select_from(Job).where(Job.loop == loop.name, Job.kind == JobKind.train)
            )
            or 0
        )
    payload = {
        "loop": loop.name,
        "cycle": n,
        "since": since.isoformat() if since else None,
        "until": now.isoformat(),
        "reason": reason,
    }
    job, created = queue.submit(
        db,
        "train",
        payload,
        priority=loop.priority,
        loop=loop.name,
        idempotency_key=f"loop:{loop.name}:cycle:{n}",
        max_attempts=loop.max_attempts,
    )
    if created:
        emit(
            db,
            "trigger.fired",
            f"loop {loop.name}: cycle {n} queued as job {job.id} ({reason})",
            loop=loop.name,
            job_id=job.id,
            data={"reason": reason, "cycle": n},
        )
    return job


def record_cycle(
    db: Database,
    settings: Settings,
    loop: LoopConfig,
    job_id: int,
    outcome: dict[str, Any],
    *,
    head_version: str | None,
    advanced: bool,
) -> None:
    """After a cycle: the outcome, the time, the head (when it advanced) and the locks
    (from the first version)."""
    now = utcnow()
    with db.session() as s:
        row = s.get(LoopState, loop.name)
        if row is None:
            row = LoopState(name=loop.name, locked={}, readiness={}, last_outcome={})
            s.add(row)
        row.last_outcome = {**outcome, "job_id": job_id, "at": now.isoformat()}
        row.last_cycle_at = now
        row.state = "idle"
        if advanced:
            if head_version:
                row.head_version_id = head_version
            if not row.locked:
                row.locked = lock_values(settings, loop)
        row.updated_at = now


def set_state(db: Database, name: str, state: str, outcome: dict[str, Any] | None = None) -> None:
    with db.session() as s:
        row = s.get(LoopState, name)
        if row is None:
            return
        row.state = state
        if outcome is not None:
            row.last_outcome = {**outcome, "at": utcnow().isoformat()}
        row.updated_at = utcnow()


def head_adapter(db: Database, settings: Settings, loop: LoopConfig) -> tuple[Path | None, str | None]:
    """(adapter folder the next cycle continues, its version id): the loop's head, or None for the base."""
    with db.read_session() as s:
        row = s.get(LoopState, loop.name)
        head = row.head_version_id if row else None
        if head:
            from learnloop.store.models import ModelVersion

            mv = s.get(ModelVersion, head)
            job = s.get(Job, mv.job_id) if mv and mv.job_id else None
            # Prefer the training run's own adapter folder: it keeps the optimizer state beside the weights.
            own = (job.result or {}).get("adapter_dir") if job else None
            if own and Path(own).is_dir():
                return Path(own), head
            if mv and mv.artifact_path and Path(mv.artifact_path).is_dir():
                return Path(mv.artifact_path), head
            if Path(data_dir(settings.data_dir).adapter(head)).is_dir():
                return data_dir(settings.data_dir).adapter(head), head
    prev = last_cycle(db, loop.name)
    if prev is not None and not head:
        own = (prev.result or {}).get("adapter_dir")
        if own and Path(own).is_dir() and (prev.result or {}).get("head", True):
            return Path(own), None
    return None, head
