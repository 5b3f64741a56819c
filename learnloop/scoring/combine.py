"""One reward per trajectory from its many scores: a weighted mean over aspects."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from learnloop.store.models import Score
from learnloop.store.query import chunks


def combine(aspects: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float | None:
    """Weighted mean of aspect values; an aspect missing from ``weights`` weighs 1.0, weight 0 ignores it."""
    weights = weights or {}
    total = norm = 0.0
    for name, value in aspects.items():
        w = weights.get(name, 1.0)
        total += w * value
        norm += abs(w)
    return total / norm if norm else None


def latest_aspects(session: Session, trajectory_ids: Iterable[str]) -> dict[str, dict[str, float]]:
    """For each trajectory, the newest value of each score name (aspect)."""
    ids = list(trajectory_ids)
    out: dict[str, dict[str, float]] = {}
    for chunk in chunks(ids):
        rows = session.execute(
            select(Score.trajectory_id, Score.name, Score.value)
            .where(Score.trajectory_id.in_(chunk))
            .order_by(Score.created_at, Score.id)
        ).all()
        for tid, name, value in rows:
            out.setdefault(tid, {})[name] = value  # later rows overwrite earlier ones
    return out


def combined_rewards(
    session: Session, trajectory_ids: Iterable[str], weights: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Combined reward of each trajectory that has at least one score (unscored ones are absent)."""
    result = {}
    for tid, aspects in latest_aspects(session, trajectory_ids).items():
        value = combine(aspects, weights)
        if value is not None:
            result[tid] = value
    return result
