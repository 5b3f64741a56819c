"""Reward statistics: distribution of combined rewards per scenario, source and day."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from learnloop.config import ScoringSettings
from learnloop.scoring.combine import CombineRule, combine
from learnloop.store.models import Score, Trajectory


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of an already sorted, non-empty list."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(values: Iterable[float]) -> dict[str, Any]:
    """count, mean, p10, p50, p90 and the share of negative values."""
    xs = sorted(values)
    if not xs:
        return {"count": 0, "mean": None, "p10": None, "p50": None, "p90": None, "share_negative": None}
    return {
        "count": len(xs),
        "mean": sum(xs) / len(xs),
        "p10": percentile(xs, 0.10),
        "p50": percentile(xs, 0.50),
        "p90": percentile(xs, 0.90),
        "share_negative": sum(1 for x in xs if x < 0) / len(xs),
    }


def reward_stats(
    session: Session,
    *,
    weights: Mapping[str, float] | ScoringSettings | None = None,
    since: dt.datetime | None = None,
    scenario: str | None = None,
) -> dict[str, Any]:
    """Distribution of rewards.

    ``overall``, ``by_scenario``, ``by_source`` (trajectory source: production, served, ...)
    and ``by_day`` (trajectory creation day, UTC) summarise the combined reward per
    trajectory; ``by_score_source`` (heuristic, human, judge, env) and ``by_aspect`` summarise
    the newest value of each score name on each trajectory.
    """
    latest, info = _latest_scores(session, since, scenario)
    rule = CombineRule.of(weights)
    combined: dict[str, float] = {}
    by_score_source: dict[str, list[float]] = {}
    by_aspect: dict[str, list[float]] = {}
    for tid, aspects in latest.items():
        value = combine(
            {k: v for k, (v, _) in aspects.items()}, rule, {k: src for k, (_, src) in aspects.items()}
        )
        if value is not None:
            combined[tid] = value
        for name, (v, src) in aspects.items():
            by_score_source.setdefault(src, []).append(v)
            by_aspect.setdefault(name, []).append(v)
    return {
        "overall": summarize(combined.values()),
        "by_scenario": _rows("scenario", _grouped(combined, info, 0)),
        "by_source": _rows("source", _grouped(combined, info, 1)),
        "by_day": _rows("day", _grouped(combined, info, 2)),
        "by_score_source": _rows("score_source", by_score_source),
        "by_aspect": _rows("aspect", by_aspect),
    }


def _latest_scores(
    session: Session, since: dt.datetime | None, scenario: str | None
) -> tuple[dict[str, dict[str, tuple[float, str]]], dict[str, tuple[str | None, str, str]]]:
    """Per trajectory, the newest (value, score source) of each score name, and its (scenario,
    source, day)."""
    q = (
        select(
            Score.trajectory_id,
            Score.name,
            Score.value,
            Score.source,
            Trajectory.scenario,
            Trajectory.source,
            Trajectory.created_at,
        )
        .join(Trajectory, Trajectory.id == Score.trajectory_id)
        .order_by(Score.created_at, Score.id)
    )
    if since is not None:
        q = q.where(Trajectory.created_at >= since)
    if scenario is not None:
        q = q.where(Trajectory.scenario == scenario)
    latest: dict[str, dict[str, tuple[float, str]]] = {}
    info: dict[str, tuple[str | None, str, str]] = {}
    for tid, name, value, score_source, scen, source, created in session.execute(q):
        if not math.isfinite(value):  # stored before the ingest refused NaN/inf: it would poison every mean
            continue
        latest.setdefault(tid, {})[name] = (value, _val(score_source))  # newer rows overwrite older
        info[tid] = (scen, _val(source), created.date().isoformat())
    return latest, info


def _grouped(
    combined: dict[str, float], info: dict[str, tuple[Any, ...]], index: int
) -> dict[Any, list[float]]:
    """The combined rewards grouped by one field of ``info`` (0 scenario, 1 source, 2 day)."""
    out: dict[Any, list[float]] = {}
    for tid, value in combined.items():
        out.setdefault(info[tid][index], []).append(value)
    return out


def _rows(label: str, groups: Mapping[Any, list[float]]) -> list[dict[str, Any]]:
    ordered = sorted(groups.items(), key=lambda kv: (kv[0] is None, str(kv[0])))
    return [{label: k, **summarize(v)} for k, v in ordered]


def _val(v: Any) -> Any:
    return getattr(v, "value", v)
