"""Rewards for the dashboard: score distributions, means per scenario, source and day, and how much
of the traffic is scored. Computed with SQL aggregates, so a page costs the same for a thousand
scores as for millions."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Integer, case, cast, exists, func, select
from sqlalchemy.orm import Session

from learnloop.store.models import Score, ScoreSource, Trajectory
from learnloop.watch.queries import _day, _num, _val


def scored_share(session: Session, since: dt.datetime) -> float | None:
    """Share of the trajectories created since ``since`` that have at least one score."""
    scored = exists(select(1).where(Score.trajectory_id == Trajectory.id))
    total, n = session.execute(
        select(func.count(), func.sum(case((scored, 1), else_=0))).where(Trajectory.created_at >= since)
    ).one()
    return (int(n or 0) / total) if total else None


def reward_overview(session: Session, since: dt.datetime, bins: int = 20) -> dict[str, Any]:
    """Histograms of score values per scenario, means per source and day, share negative, judged vs unjudged.

    Computed with SQL aggregates (bucket counts), so it costs the same for a thousand scores as for millions.
    """
    scenario = func.coalesce(Trajectory.scenario, "(none)")
    pg = session.get_bind().dialect.name == "postgresql"
    lo, hi = session.execute(
        select(func.min(Score.value), func.max(Score.value)).where(Score.created_at >= since)
    ).one()
    hist: dict[str, list[int]] = {}
    edges: list[float] = []
    if lo is not None:
        lo, hi = float(lo), float(hi)
        if hi == lo:
            hi = lo + 1.0
        width = (hi - lo) / bins
        edges = [lo + i * width for i in range(bins + 1)]
        scaled = (Score.value - lo) / width
        bucket = cast(func.floor(scaled), Integer) if pg else cast(scaled, Integer)
        for sc, b, n in session.execute(
            select(scenario, bucket, func.count())
            .join(Trajectory, Trajectory.id == Score.trajectory_id)
            .where(Score.created_at >= since)
            .group_by(scenario, bucket)
        ):
            hist.setdefault(sc, [0] * bins)[min(bins - 1, max(0, int(b)))] += (
                n  # the maximum lands in the last bin
            )
    neg = func.sum(case((Score.value < 0, 1), else_=0))

    def per(col: Any) -> list[dict[str, Any]]:
        return [
            {
                "key": str(_val(k)),
                "mean": _num(m),
                "count": n,
                "share_negative": (int(ng or 0) / n) if n else None,
            }
            for k, m, n, ng in session.execute(
                select(col, func.avg(Score.value), func.count(), neg)
                .join(Trajectory, Trajectory.id == Score.trajectory_id)
                .where(Score.created_at >= since)
                .group_by(col)
                .order_by(col)
            )
        ]

    judged = exists(select(1).where(Score.trajectory_id == Trajectory.id, Score.source == ScoreSource.judge))
    scored = exists(select(1).where(Score.trajectory_id == Trajectory.id))
    counts = session.execute(
        select(
            func.count(), func.sum(case((judged, 1), else_=0)), func.sum(case((scored, 1), else_=0))
        ).where(Trajectory.created_at >= since)
    ).one()
    total, n_judged, n_scored = counts[0] or 0, int(counts[1] or 0), int(counts[2] or 0)
    return {
        "edges": edges,
        "histograms": hist,
        "by_scenario": per(scenario),
        "by_source": per(Trajectory.source),
        "by_score_source": per(Score.source),
        "by_day": per(_day(session, Score.created_at)),
        "trajectories": {
            "total": total,
            "judged": n_judged,
            "unjudged": total - n_judged,
            "scored": n_scored,
            "unscored": total - n_scored,
        },
    }
