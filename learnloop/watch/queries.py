"""Small read queries over the tables the other stages write (jobs, versions, evaluations, aliases,
events, loops).

The watch stage reads the rows, not the stages' code, so it works whatever of them is built:
an empty table reads as an empty list, never as an error. Every query is bounded (LIMIT or
aggregate) so a page stays fast on a database with years of history.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from learnloop.store.models import (
    Alias,
    Control,
    Evaluation,
    Event,
    Job,
    JobState,
    LoopState,
    ModelVersion,
    Score,
    Source,
    TrainingMetric,
    Trajectory,
    utcnow,
)

ACTIVE_STATES = (JobState.running, JobState.paused)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _val(v: Any) -> Any:
    return getattr(v, "value", v)


def _num(v: Any) -> float | None:
    """A JSON-safe float: NaN and infinities become None (JSON has no NaN)."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def start_of_day(now: dt.datetime | None = None) -> dt.datetime:
    now = now or utcnow()
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


# -- loops and control --------------------------------------------------------------------------


def loops(session: Session, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    now = now or utcnow()
    out = []
    for row in session.scalars(select(LoopState).order_by(LoopState.name)):
        readiness = row.readiness or {}
        reasons = readiness.get("reasons") if isinstance(readiness, dict) else None
        out.append(
            {
                "name": row.name,
                "state": row.state,
                "head_version": row.head_version_id,
                "last_check_at": _iso(row.last_check_at),
                "next_check_at": _iso(row.next_check_at),
                "next_check_in_s": max(0.0, round((row.next_check_at - now).total_seconds(), 1))
                if row.next_check_at
                else None,
                "last_cycle_at": _iso(row.last_cycle_at),
                "ready": readiness.get("ready") if isinstance(readiness, dict) else None,
                "readiness_reasons": reasons if isinstance(reasons, list) else [],
                "readiness": readiness,
                "last_outcome": row.last_outcome or {},
            }
        )
    return out


def control_switches(session: Session) -> dict[str, Any]:
    return {row.key: row.value for row in session.scalars(select(Control).order_by(Control.key))}


# -- jobs -----------------------------------------------------------------------------------------


def queue_summary(session: Session) -> dict[str, Any]:
    """Job counts by state, and by priority for the ones still to run or running."""
    from learnloop.daemon.queue import priority_name

    by_state = {_val(s): n for s, n in session.execute(select(Job.state, func.count()).group_by(Job.state))}
    rows = session.execute(
        select(Job.priority, Job.state, func.count())
        .where(Job.state.in_([JobState.queued, JobState.running, JobState.paused]))
        .group_by(Job.priority, Job.state)
        .order_by(Job.priority)
    )
    by_priority: dict[int, dict[str, int]] = {}
    for priority, state, n in rows:
        by_priority.setdefault(priority, {})[_val(state)] = n
    return {
        "by_state": {s.value: by_state.get(s.value, 0) for s in JobState},
        "by_priority": [
            {"priority": p, "priority_name": priority_name(p), **counts}
            for p, counts in sorted(by_priority.items())
        ],
        "depth": by_state.get("queued", 0),
    }


def _jobs(rows: Any, *, brief: bool = True) -> list[dict[str, Any]]:
    """Jobs as the daemon shows them (``JobInfo.as_dict``): the one view of a job."""
    from learnloop.daemon.queue import JobInfo

    now = utcnow()
    return [JobInfo.of(j).as_dict(brief=brief, now=now) for j in rows]


def active_jobs(session: Session) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(Job)
        .where(Job.state.in_(ACTIVE_STATES))
        .order_by(Job.started_at.desc(), Job.id.desc())
        .limit(20)
    )
    return _jobs(rows)


def list_jobs(
    session: Session, *, state: str | None = None, limit: int = 50, offset: int = 0
) -> list[dict[str, Any]]:
    q = select(Job).order_by(Job.id.desc()).limit(limit).offset(offset)
    if state:
        q = q.where(Job.state == JobState(state))
    return _jobs(session.scalars(q))


def queued_jobs(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    q = select(Job).where(Job.state == JobState.queued).order_by(Job.priority, Job.id).limit(limit)
    return _jobs(session.scalars(q))


def get_job(session: Session, job_id: int) -> dict[str, Any] | None:
    """One job in full (payload, result, output), or None."""
    job = session.get(Job, job_id)
    return _jobs([job], brief=False)[0] if job is not None else None


def job_events(session: Session, job_id: int, limit: int = 20) -> list[dict[str, Any]]:
    """The job's newest events, newest first."""
    rows = session.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.id.desc()).limit(limit))
    return [event_view(e) for e in rows]


def metric_series(
    session: Session, job_id: int, *, max_points: int = 400, after_step: int | None = None
) -> dict[str, Any]:
    """Loss, learning rate and tokens/s of a job by step, downsampled on the server.

    Steps are cut into at most ``max_points`` equal buckets and each bucket is averaged in SQL,
    so a run of a million steps sends the browser a few hundred points. ``after_step`` returns
    the raw points past a step (what a live view appends).
    """
    base = select(func.min(TrainingMetric.step), func.max(TrainingMetric.step), func.count()).where(
        TrainingMetric.job_id == job_id
    )
    if after_step is not None:
        base = base.where(TrainingMetric.step > after_step)
    lo, hi, n = session.execute(base).one()
    if not n:
        return {"job_id": job_id, "points": [], "count": 0, "bucket": 1, "last_step": after_step}
    bucket = max(1, math.ceil((hi - lo + 1) / max_points))
    key = ((TrainingMetric.step - lo) / bucket) if bucket > 1 else TrainingMetric.step
    if bucket > 1:
        key = (
            func.floor(key)
            if session.get_bind().dialect.name == "postgresql"
            else func.cast(key, type_=TrainingMetric.step.type)
        )
    q = (
        select(
            func.max(TrainingMetric.step),
            func.avg(TrainingMetric.loss),
            func.avg(TrainingMetric.learning_rate),
            func.avg(TrainingMetric.tokens_per_s),
            func.max(TrainingMetric.loss),
        )
        .where(TrainingMetric.job_id == job_id)
        .group_by(key)
        .order_by(func.max(TrainingMetric.step))
    )
    if after_step is not None:
        q = q.where(TrainingMetric.step > after_step)
    points = [
        {"step": s, "loss": _num(loss), "lr": _num(lr), "tokens_per_s": _num(tps), "loss_max": _num(lmax)}
        for s, loss, lr, tps, lmax in session.execute(q)
    ]
    return {"job_id": job_id, "points": points, "count": n, "bucket": bucket, "last_step": hi}


def recent_losses(session: Session, job_id: int, window: int) -> list[tuple[int, float | None]]:
    q = (
        select(TrainingMetric.step, TrainingMetric.loss)
        .where(TrainingMetric.job_id == job_id)
        .order_by(TrainingMetric.step.desc())
        .limit(window)
    )
    return [(s, loss) for s, loss in session.execute(q)]


# -- versions, evaluations, serving -----------------------------------------------------------


def versions(
    session: Session, *, limit: int = 200, job_id: int | None = None, dataset_id: int | None = None
) -> list[dict[str, Any]]:
    """Versions as the registry shows them (``VersionInfo.as_dict``), newest first; those a job made
    or a dataset trained when given."""
    from learnloop.registry.versions import version_dicts

    q = select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc()).limit(limit)
    if job_id is not None:
        q = q.where(ModelVersion.job_id == job_id)
    if dataset_id is not None:
        q = q.where(ModelVersion.dataset_id == dataset_id)
    return version_dicts(session, session.scalars(q))


def version_ids(session: Session) -> set[str]:
    """Every registered version's id (what a page may link to)."""
    return set(session.scalars(select(ModelVersion.id)))


def child_versions(session: Session, version_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """The versions trained on from ``version_id`` (id and state), oldest first."""
    rows = session.execute(
        select(ModelVersion.id, ModelVersion.state)
        .where(ModelVersion.parent_id == version_id)
        .order_by(ModelVersion.created_at, ModelVersion.id)
        .limit(limit)
    )
    return [{"id": vid, "state": _val(state)} for vid, state in rows]


def evaluation_view(e: Evaluation) -> dict[str, Any]:
    gate = e.gate or {}
    return {
        "id": e.id,
        "candidate_id": e.candidate_id,
        "baseline_id": e.baseline_id,
        "scenario": e.scenario,
        "verdict": e.verdict,
        "metrics": e.metrics or {},
        "reasons": gate.get("reasons", []) if isinstance(gate, dict) else [],
        "created_at": _iso(e.created_at),
    }


def last_evaluation(session: Session) -> dict[str, Any] | None:
    row = session.scalars(
        select(Evaluation).order_by(Evaluation.created_at.desc(), Evaluation.id.desc()).limit(1)
    ).first()
    return evaluation_view(row) if row else None


def list_evaluations(
    session: Session, limit: int = 200, candidate_ids: list[str] | None = None
) -> list[dict[str, Any]]:
    q = select(Evaluation).order_by(Evaluation.created_at.desc(), Evaluation.id.desc()).limit(limit)
    if candidate_ids is not None:
        q = q.where(Evaluation.candidate_id.in_(candidate_ids))
    return [evaluation_view(e) for e in session.scalars(q)]


def serving(session: Session) -> list[dict[str, Any]]:
    out = []
    for a in session.scalars(select(Alias).order_by(Alias.name)):
        out.append(
            {
                "alias": a.name,
                "version": a.version_id or "base",
                "version_id": a.version_id,
                "candidate": a.candidate_id,
                "split": a.split,
                "shadow": a.shadow,
                "updated_at": _iso(a.updated_at),
            }
        )
    return out


def alias_events(
    session: Session, limit: int = 200, since: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """The alias log, newest first, as the registry shows every entry (``registry.log_entry``)."""
    from learnloop.registry.aliases import alias_log

    return alias_log(session, since=since, limit=limit)


def served_traffic(session: Session, since: dt.datetime) -> dict[str, Any]:
    """Served trajectories per version: count, mean latency (metadata latency_ms) and per day."""
    latency = Trajectory.meta["latency_ms"].as_float()
    version = func.coalesce(Trajectory.model_version, "base")
    # What this server answered: its own models' answers, and an upstream's (captured as teacher data).
    served = or_(Trajectory.source == Source.served, Trajectory.model_version.like("upstream:%"))
    per_version = [
        {"version": v, "requests": n, "latency_ms_mean": _num(lat), "latency_ms_max": _num(lmax)}
        for v, n, lat, lmax in session.execute(
            select(version, func.count(), func.avg(latency), func.max(latency))
            .where(served, Trajectory.created_at >= since)
            .group_by(version)
            .order_by(func.count().desc())
        )
    ]
    day = _day(session, Trajectory.created_at)
    per_day = [
        {"day": str(d), "version": v, "requests": n}
        for d, v, n in session.execute(
            select(day, version, func.count())
            .where(served, Trajectory.created_at >= since)
            .group_by(day, version)
            .order_by(day)
        )
    ]
    return {"per_version": per_version, "per_day": per_day}


def live_reward_by_day(session: Session, since: dt.datetime, scoring: Any = None) -> list[dict[str, Any]]:
    """Mean reward of served traffic per day and version: each trajectory's reward under scoring's one
    rule (``combine_scores``, explicit-first; ``scoring``: the ``[scoring]`` settings), then averaged,
    so the line compares with the evaluated reward the gate saw."""
    from learnloop.scoring.combine import CombineRule, combine_scores

    rule = CombineRule.of(scoring)
    day = _day(session, Trajectory.created_at)
    version = func.coalesce(Trajectory.model_version, "base")
    q = (
        select(Trajectory.id, day, version, Score.name, Score.value, Score.source)
        .join(Score, Score.trajectory_id == Trajectory.id)
        .where(Trajectory.source == Source.served, Trajectory.created_at >= since)
        .order_by(Score.created_at, Score.id)
    )
    scores: dict[str, dict[str, tuple[float, str]]] = {}
    place: dict[str, tuple[str, str]] = {}
    for tid, d, v, name, value, source in session.execute(q):
        scores.setdefault(tid, {})[name] = (value, _val(source))  # newer rows overwrite older
        place[tid] = (str(d), v)
    sums: dict[tuple[str, str], list[float]] = {}
    for tid, aspects in scores.items():
        reward = combine_scores(aspects, rule)
        if reward is not None:
            acc = sums.setdefault(place[tid], [0.0, 0])
            acc[0] += reward
            acc[1] += 1
    return [
        {"day": d, "version": v, "reward_mean": _num(total / n), "trajectories": int(n)}
        for (d, v), (total, n) in sorted(sums.items())
    ]


# -- trajectories -----------------------------------------------------------------------------


def trajectory_counts(session: Session, now: dt.datetime | None = None) -> dict[str, Any]:
    today = start_of_day(now)
    rows = session.execute(
        select(
            Trajectory.source, func.count(), func.sum(case((Trajectory.created_at >= today, 1), else_=0))
        ).group_by(Trajectory.source)
    )
    by_source = {s.value: {"total": 0, "today": 0} for s in Source}
    for source, total, today_n in rows:
        by_source[_val(source)] = {"total": total, "today": int(today_n or 0)}
    last = session.scalar(select(func.max(Trajectory.created_at)))
    return {
        "total": sum(v["total"] for v in by_source.values()),
        "today": sum(v["today"] for v in by_source.values()),
        "by_source": by_source,
        "last_at": _iso(last),
    }


def latest_trajectory_at(session: Session) -> dt.datetime | None:
    return session.scalar(select(func.max(Trajectory.created_at)))


def reward_means(session: Session, since: dt.datetime) -> list[dict[str, Any]]:
    q = (
        select(func.coalesce(Trajectory.scenario, ""), Score.name, func.avg(Score.value), func.count())
        .join(Trajectory, Trajectory.id == Score.trajectory_id)
        .where(Score.created_at >= since)
        .group_by(Trajectory.scenario, Score.name)
    )
    return [
        {"scenario": sc, "name": name, "mean": _num(m), "count": n} for sc, name, m, n in session.execute(q)
    ]


# -- events -----------------------------------------------------------------------------------


def event_view(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "kind": e.kind,
        "level": e.level,
        "message": e.message,
        "loop": e.loop,
        "job_id": e.job_id,
        "version_id": e.version_id,
        "data": e.data or {},
        "created_at": _iso(e.created_at),
    }


def events_after(session: Session, after_id: int | None, limit: int = 100) -> list[dict[str, Any]]:
    """Oldest first after ``after_id`` (what a live stream sends);
    newest ``limit`` when ``after_id`` is None."""
    if after_id is None:
        rows = list(session.scalars(select(Event).order_by(Event.id.desc()).limit(limit)))
        rows.reverse()
    else:
        rows = list(session.scalars(select(Event).where(Event.id > after_id).order_by(Event.id).limit(limit)))
    return [event_view(e) for e in rows]


def _day(session: Session, column: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.substr(column, 1, 10)
