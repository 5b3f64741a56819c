"""Feedback signals (rating, thumbs, success, correction) turned into one `feedback` reward.

Design: each trajectory gets ONE combined score named ``feedback`` (source ``human``), the
weighted mean of its signals, each mapped onto the configured range ([-1, 1] 'signed' or
[0, 1] 'unit'):

- rating: linear from [rating_min, rating_max] onto the range (clamped);
- thumbs: up is the top of the range, down the bottom;
- success: True is the top, False the bottom;
- correction: a corrected answer counts as the bottom (a penalty whose strength is its weight).

Several feedback rows on one trajectory are averaged signal by signal first. Comment-only
feedback stores no score. The idempotency key names the feedback rows it covers and the
settings it used, so new feedback or new weights give a new score (the newest wins in the
combined reward) while re-running changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from learnloop.config import ScoringSettings
from learnloop.store.db import Database
from learnloop.store.models import Feedback, Score, ScoreSource, utcnow
from learnloop.store.query import chunks, insert_ignoring_duplicates

FEEDBACK_SCORE_NAME = "feedback"
FEEDBACK_VERSION = "1"
SIGNALS = ("rating", "thumbs", "success", "correction")


@dataclass
class FeedbackReport:
    trajectories_with_feedback: int = 0
    scored: int = 0
    already_scored: int = 0
    no_signal: int = 0
    trajectory_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "trajectories_with_feedback": self.trajectories_with_feedback,
            "scored": self.scored,
            "already_scored": self.already_scored,
            "no_signal": self.no_signal,
        }


def settings_digest(config: ScoringSettings) -> str:
    """Short hash of the settings that shape the feedback reward."""
    shaping = {
        "min": config.rating_min,
        "max": config.rating_max,
        "range": config.feedback_range,
        "w": config.feedback_weights.model_dump(),
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:10]


def signal_values(fb: Any, config: ScoringSettings) -> dict[str, float]:
    """The signals one feedback row carries, each mapped onto the configured range."""
    lo, hi = (-1.0, 1.0) if config.feedback_range == "signed" else (0.0, 1.0)
    out: dict[str, float] = {}
    if fb.rating is not None and math.isfinite(fb.rating):  # NaN/inf predate the ingest's refusal
        frac = (fb.rating - config.rating_min) / (config.rating_max - config.rating_min)
        out["rating"] = lo + min(1.0, max(0.0, frac)) * (hi - lo)
    if fb.thumbs is not None:
        out["thumbs"] = hi if fb.thumbs > 0 else lo
    if fb.success is not None:
        out["success"] = hi if fb.success else lo
    if fb.correction not in (None, "", {}):
        out["correction"] = lo
    return out


def feedback_reward(rows: Sequence[Any], config: ScoringSettings) -> tuple[float, str] | None:
    """(reward, rationale) from all feedback rows of one trajectory; None if no row carries a signal."""
    per_signal: dict[str, list[float]] = {}
    for fb in rows:
        for name, value in signal_values(fb, config).items():
            per_signal.setdefault(name, []).append(value)
    weights = config.feedback_weights.model_dump()
    total = norm = 0.0
    parts = []
    for name in SIGNALS:
        values = per_signal.get(name)
        if not values:
            continue
        mean = sum(values) / len(values)
        parts.append(f"{name}={mean:+.2f} (n={len(values)}, w={weights[name]:g})")
        total += weights[name] * mean
        norm += weights[name]
    if not norm:
        return None
    return total / norm, "; ".join(parts)


def feedback_key(trajectory_id: str, last_id: int, count: int, digest: str) -> str:
    return f"human:{FEEDBACK_SCORE_NAME}:{trajectory_id}:{last_id}:{count}:{digest}"


def apply_feedback(
    db: Database, config: ScoringSettings | None = None, *, trajectory_ids: Iterable[str] | None = None
) -> FeedbackReport:
    """Store a `feedback` score for each trajectory whose feedback
    (or the settings) changed since last time."""
    config = config or ScoringSettings()
    digest = settings_digest(config)
    report = FeedbackReport()
    groups = _feedback_groups(db, trajectory_ids)
    report.trajectories_with_feedback = len(groups)
    wanted = {tid: feedback_key(tid, last, n, digest) for tid, last, n in groups}
    last_ids = {tid: last for tid, last, _ in groups}
    for batch in chunks(sorted(wanted)):
        with db.read_session() as s:
            keys = [wanted[t] for t in batch]
            have = set(s.scalars(select(Score.idempotency_key).where(Score.idempotency_key.in_(keys))))
            todo = [t for t in batch if wanted[t] not in have]
            report.already_scored += len(batch) - len(todo)
            if not todo:
                continue
            fb_rows = s.scalars(
                select(Feedback).where(Feedback.trajectory_id.in_(todo)).order_by(Feedback.id)
            ).all()
        by_tid: dict[str, list[Any]] = {}
        for fb in fb_rows:
            # Only the rows the key counted: feedback that arrived since is left for the next run.
            if fb.id <= last_ids[fb.trajectory_id]:
                by_tid.setdefault(fb.trajectory_id, []).append(fb)
        score_rows = []
        for tid in todo:
            row = _score_row(tid, by_tid.get(tid, []), config, digest, wanted[tid])
            if row is None:
                report.no_signal += 1
            else:
                score_rows.append(row)
        inserted = _insert_scores(db, score_rows)
        report.scored += len(inserted)
        report.trajectory_ids.extend(inserted)
    return report


def _feedback_groups(db: Database, trajectory_ids: Iterable[str] | None) -> list[Any]:
    """(trajectory id, newest feedback id, feedback count) of each trajectory with feedback."""
    q = select(Feedback.trajectory_id, func.max(Feedback.id), func.count()).group_by(Feedback.trajectory_id)
    with db.read_session() as s:
        if trajectory_ids is None:
            return list(s.execute(q).all())
        ids = sorted(set(trajectory_ids))
        return [row for c in chunks(ids) for row in s.execute(q.where(Feedback.trajectory_id.in_(c))).all()]


def _score_row(
    tid: str, rows: list[Any], config: ScoringSettings, digest: str, key: str
) -> dict[str, Any] | None:
    """The `feedback` score row for one trajectory's feedback rows; None when none carries a signal."""
    result = feedback_reward(rows, config)
    if result is None:
        return None
    value, rationale = result
    authors = sorted({fb.author for fb in rows if fb.author})
    return {
        "trajectory_id": tid,
        "name": FEEDBACK_SCORE_NAME,
        "value": value,
        "source": ScoreSource.human,
        "version": f"{FEEDBACK_VERSION}+{digest}",
        "author": ", ".join(authors)[:128] or None,
        "rationale": rationale,
        "idempotency_key": key,
        "created_at": utcnow(),
    }


def _insert_scores(db: Database, score_rows: list[dict[str, Any]]) -> list[str]:
    """Store the rows (a key already stored is skipped); the trajectory ids really scored."""
    if not score_rows:
        return []
    with db.session() as s:
        return list(
            s.scalars(insert_ignoring_duplicates(s, Score).returning(Score.trajectory_id), score_rows).all()
        )
