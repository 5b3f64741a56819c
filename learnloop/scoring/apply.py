"""Run heuristic reward functions over trajectories that have not been scored by them yet."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, exists, not_, or_, select
from sqlalchemy.orm import Session

from learnloop.config import ScoringSettings
from learnloop.scoring.feedback import FeedbackReport, apply_feedback
from learnloop.scoring.registry import RewardFunction, get, load_modules, registered
from learnloop.scoring.view import TrajectoryView
from learnloop.store.db import Database
from learnloop.store.models import Score, ScoreRun, ScoreSource, Trajectory, utcnow
from learnloop.store.query import chunks, insert_ignoring_duplicates

MAX_REPORTED_ERRORS = 200


@dataclass
class RewardError:
    name: str
    version: str
    trajectory_id: str
    error: str

    def as_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "version": self.version,
            "trajectory_id": self.trajectory_id,
            "error": self.error,
        }


@dataclass
class FunctionCounts:
    scored: int = 0
    not_applicable: int = 0
    failed: int = 0


@dataclass
class HeuristicReport:
    trajectories_seen: int = 0
    counts: dict[str, FunctionCounts] = field(default_factory=dict)
    errors: list[RewardError] = field(default_factory=list)
    errors_total: int = 0

    @property
    def scored(self) -> int:
        return sum(c.scored for c in self.counts.values())

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "trajectories_seen": self.trajectories_seen,
            "scored": self.scored,
            "failed": self.failed,
            "functions": {k: vars(v) for k, v in sorted(self.counts.items())},
            "errors": [e.as_dict() for e in self.errors],
            "errors_total": self.errors_total,
        }


def heuristic_key(fn: RewardFunction, trajectory_id: str) -> str:
    return f"heuristic:{fn.name}:{fn.version}:{trajectory_id}"


def _check_value(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"returned {value!r} ({type(value).__name__}); a reward function must return a float or None"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"returned {value}; a reward must be a finite number")
    return value


def score_views(
    functions: Sequence[RewardFunction],
    views: Iterable[TrajectoryView],
    needed: dict[str, set[str]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], HeuristicReport]:
    """Apply functions to views in memory: (score rows, run rows, report). No database involved.

    ``needed`` maps a trajectory id to the function names still to run on it (default: all).
    """
    report = HeuristicReport(counts={f.name: FunctionCounts() for f in functions})
    scores: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    now = utcnow()
    for view in views:
        report.trajectories_seen += 1
        todo = needed.get(view.id, set()) if needed is not None else None
        for fn in functions:
            if todo is not None and fn.name not in todo:
                continue
            counts = report.counts[fn.name]
            try:
                value = _check_value(fn(view))
            except Exception as exc:  # a broken user function must not stop the others
                counts.failed += 1
                report.errors_total += 1
                if len(report.errors) < MAX_REPORTED_ERRORS:
                    report.errors.append(
                        RewardError(fn.name, fn.version, view.id, f"{type(exc).__name__}: {exc}")
                    )
                continue
            outcome = "not_applicable" if value is None else "scored"
            runs.append(
                {
                    "trajectory_id": view.id,
                    "name": fn.name,
                    "version": fn.version,
                    "outcome": outcome,
                    "created_at": now,
                }
            )
            if value is None:
                counts.not_applicable += 1
                continue
            counts.scored += 1
            scores.append(
                {
                    "trajectory_id": view.id,
                    "name": fn.name,
                    "value": value,
                    "source": ScoreSource.heuristic,
                    "version": fn.version,
                    "idempotency_key": heuristic_key(fn, view.id),
                    "created_at": now,
                }
            )
    return scores, runs, report


def _not_run(fn: RewardFunction) -> Any:
    return not_(
        exists().where(
            and_(
                ScoreRun.trajectory_id == Trajectory.id,
                ScoreRun.name == fn.name,
                ScoreRun.version == fn.version,
            )
        )
    )


def _pending_page(
    session: Session,
    functions: Sequence[RewardFunction],
    after: str | None,
    limit: int,
    ids: list[str] | None,
) -> list[str]:
    q = select(Trajectory.id).where(or_(*(_not_run(f) for f in functions)))
    if after is not None:
        q = q.where(Trajectory.id > after)
    if ids is not None:
        q = q.where(Trajectory.id.in_(ids))
    return list(session.scalars(q.order_by(Trajectory.id).limit(limit)))


def apply_heuristics(
    db: Database,
    *,
    names: Sequence[str] | None = None,
    functions: Sequence[RewardFunction] | None = None,
    config: ScoringSettings | None = None,
    trajectory_ids: Iterable[str] | None = None,
    batch_size: int = 500,
) -> HeuristicReport:
    """Score every trajectory that a (name, version) of a reward function has not seen yet.

    Each batch is written in its own transaction, so an interrupted run keeps what it
    finished and the next run picks up the rest. Re-running is a no-op; a new version of a
    function scores everything again. A function that raises is reported in the result and
    retried on the next run; the other functions' scores are stored regardless.
    """
    config = config or ScoringSettings()
    fns = list(functions) if functions is not None else (get(names) if names else registered())
    report = HeuristicReport(counts={f.name: FunctionCounts() for f in fns})
    if not fns:
        return report
    if trajectory_ids is None:
        id_chunks: list[list[str] | None] = [None]
    else:
        id_chunks = list(chunks(sorted(set(trajectory_ids)), batch_size))
    for chunk in id_chunks:
        after: str | None = None
        while True:
            with db.read_session() as s:
                page = _pending_page(s, fns, after, batch_size, chunk)
                if not page:
                    break
                after = page[-1]
                done = s.execute(
                    select(ScoreRun.trajectory_id, ScoreRun.name, ScoreRun.version).where(
                        ScoreRun.trajectory_id.in_(page), ScoreRun.name.in_([f.name for f in fns])
                    )
                ).all()
                rows = s.scalars(
                    select(Trajectory).where(Trajectory.id.in_(page)).order_by(Trajectory.id)
                ).all()
                views = [TrajectoryView.from_row(r, config) for r in rows]
            versions = {f.name: f.version for f in fns}
            needed = {tid: {f.name for f in fns} for tid in page}
            for tid, name, version in done:
                if versions.get(name) == version:
                    needed[tid].discard(name)
            scores, runs, batch_report = score_views(fns, views, needed)
            if runs:
                with db.session() as s:
                    # Core execution on the session's connection: the ORM bulk path costs about
                    # twice as much per row here, for nothing we use.
                    conn = s.connection()
                    if scores:
                        conn.execute(insert_ignoring_duplicates(s, Score), scores)
                    conn.execute(insert_ignoring_duplicates(s, ScoreRun), runs)
            _merge(report, batch_report)
    return report


def _merge(into: HeuristicReport, other: HeuristicReport) -> None:
    into.trajectories_seen += other.trajectories_seen
    for name, c in other.counts.items():
        t = into.counts.setdefault(name, FunctionCounts())
        t.scored += c.scored
        t.not_applicable += c.not_applicable
        t.failed += c.failed
    into.errors.extend(other.errors[: max(0, MAX_REPORTED_ERRORS - len(into.errors))])
    into.errors_total += other.errors_total


@dataclass
class ApplyReport:
    heuristics: HeuristicReport
    feedback: FeedbackReport
    group_refinements: int = 0  # group members whose successor asked again (refinement.py)

    def as_dict(self) -> dict[str, Any]:
        return {
            "heuristics": self.heuristics.as_dict(),
            "feedback": self.feedback.as_dict(),
            "group_refinements": self.group_refinements,
        }


def apply_rewards(
    db: Database,
    config: ScoringSettings | None = None,
    *,
    names: Sequence[str] | None = None,
    modules: Sequence[str] = (),
    feedback: bool = True,
) -> ApplyReport:
    """What `learnloop rewards apply` does: heuristics, then feedback, on everything not yet scored.

    ``modules`` (plus ``config.reward_modules``) are imported first so their `@reward` functions register.
    """
    config = config or ScoringSettings()
    load_modules([*config.reward_modules, *modules])
    heuristics = apply_heuristics(db, names=names, config=config)
    fb = apply_feedback(db, config) if feedback else FeedbackReport()
    group = 0
    if not names or "refinement" in names:
        from learnloop.scoring.refinement import apply_group_refinement

        group = apply_group_refinement(db, config)
    return ApplyReport(heuristics, fb, group)
