"""Writes and reads of trajectories, scores and feedback: the queries other stages use."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from learnloop.errors import NotFound
from learnloop.store.models import Feedback, Score, ScoreSource, Split, Trajectory, utcnow
from learnloop.store.records import FeedbackIn, IngestBatch, ScoreIn, TrajectoryIn

DEFAULT_HOLDOUT_FRACTION = 0.1


def prompt_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages before the first assistant turn: what the model was asked."""
    out = []
    for m in messages:
        if m.get("role") == "assistant":
            break
        out.append(m)
    return out


def prompt_hash(messages: Sequence[dict[str, Any]]) -> str:
    canonical = json.dumps(
        [{"role": m.get("role"), "content": m.get("content")} for m in prompt_messages(messages)],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def assign_split(key: str, holdout_fraction: float) -> Split:
    """Deterministic split from a hash: the same prompt or group always lands on the same side.

    Frozen at capture and never recomputed, so a later change of the fraction cannot move
    held-out rows into training.
    """
    if holdout_fraction <= 0:
        return Split.train
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return Split.holdout if bucket < holdout_fraction else Split.train


@dataclass
class IngestResult:
    inserted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    feedback_inserted: int = 0
    scores_inserted: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "inserted": len(self.inserted),
            "duplicates": len(self.duplicates),
            "ids": self.inserted + self.duplicates,
            "feedback_inserted": self.feedback_inserted,
            "scores_inserted": self.scores_inserted,
        }


def _insert_new(session: Session, table: Table, rows: list[dict[str, Any]], unique: Sequence[str]) -> list[dict[str, Any]]:
    """Insert the rows whose unique values are neither stored nor repeated earlier in ``rows``; return them.

    Known keys are looked up first so most duplicates never reach the insert. ``ON CONFLICT
    DO NOTHING`` guards against a concurrent writer inserting the same key between the lookup
    and the insert.
    """
    seen: dict[str, set[Any]] = {}
    for col in unique:
        values = list({r[col] for r in rows if r.get(col) is not None})
        found: set[Any] = set()
        column = table.c[col]
        for i in range(0, len(values), 500):
            found.update(session.execute(select(column).where(column.in_(values[i : i + 500]))).scalars())
        seen[col] = found
    new = []
    for r in rows:
        if any(r.get(col) is not None and r[col] in seen[col] for col in unique):
            continue
        for col in unique:
            if r.get(col) is not None:
                seen[col].add(r[col])
        new.append(r)
    if not new:
        return new
    if session.get_bind().dialect.name != "postgresql":
        # BEGIN IMMEDIATE holds SQLite's write lock from before the lookup, so no other writer
        # can have stored one of these keys since: the lookup is exact.
        session.execute(sqlite.insert(table).on_conflict_do_nothing(), new)
        return new
    # PostgreSQL writers run concurrently: a key committed by another transaction after the
    # lookup is skipped by ON CONFLICT, and RETURNING tells which rows really went in.
    cols = [table.c[col] for col in unique]
    stored = session.execute(postgresql.insert(table).on_conflict_do_nothing().returning(*cols), new).all()
    returned = [{row[i] for row in stored} for i in range(len(unique))]
    return [
        r
        for r in new
        if all(r.get(col) is None for col in unique)
        or any(r.get(col) is not None and r[col] in returned[i] for i, col in enumerate(unique))
    ]


def trajectory_row(t: TrajectoryIn, project: str, holdout_fraction: float, now: dt.datetime) -> dict[str, Any]:
    messages = [m.model_dump(exclude_none=True) for m in t.messages]
    tid = t.id or uuid.uuid4().hex
    phash = prompt_hash(messages)
    return {
        "id": tid,
        "idempotency_key": t.idempotency_key or tid,
        "project": t.project or project,
        "scenario": t.scenario,
        "group_id": t.group,
        "window_id": t.window,
        "agent": t.agent,
        "source": t.source,
        "model": t.model,
        "model_version": t.model_version,
        "messages": messages,
        "tools": t.tools,
        "metadata": t.metadata,
        "tags": t.tags,
        "prompt_hash": phash,
        "split": assign_split(t.group or phash, holdout_fraction),
        "created_at": t.created_at or now,
        "ingested_at": now,
    }


def _feedback_row(f: FeedbackIn, trajectory_id: str, now: dt.datetime) -> dict[str, Any]:
    key = f.idempotency_key or _content_key("fb", trajectory_id, f.model_dump(mode="json", exclude={"idempotency_key"}))
    return {
        "trajectory_id": trajectory_id,
        "idempotency_key": key,
        "rating": f.rating,
        "thumbs": f.thumbs,
        "success": f.success,
        "correction": f.correction,
        "comment": f.comment,
        "author": f.author,
        "metadata": f.metadata,
        "created_at": f.created_at or now,
    }


def _score_row(s: ScoreIn, trajectory_id: str, now: dt.datetime) -> dict[str, Any]:
    return {
        "trajectory_id": trajectory_id,
        "name": s.name,
        "value": s.value,
        "source": s.source,
        "version": s.version,
        "author": s.author,
        "judge_model": s.judge_model,
        "rationale": s.rationale,
        "idempotency_key": s.idempotency_key,
        "created_at": now,
    }


def _content_key(prefix: str, trajectory_id: str, content: Any) -> str:
    # Feedback without a caller key is deduplicated by content, so a retried send is a no-op.
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:40]
    return f"{prefix}:{trajectory_id}:{digest}"[:128]


def ingest(
    session: Session,
    batch: IngestBatch,
    *,
    project: str = "default",
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
) -> IngestResult:
    """Store one batch in the caller's transaction: all of it, or (on any error) none of it.

    Idempotent: a trajectory whose id or idempotency key is already stored is skipped, and so
    are the scores and feedback embedded in it (they were stored with it the first time).
    """
    now = utcnow()
    result = IngestResult()
    rows = [trajectory_row(t, project, holdout_fraction, now) for t in batch.trajectories]
    inserted = {r["id"] for r in _insert_new(session, Trajectory.__table__, rows, ("id", "idempotency_key"))}
    for row in rows:
        (result.inserted if row["id"] in inserted else result.duplicates).append(row["id"])

    feedback_rows: list[dict[str, Any]] = []
    score_rows: list[dict[str, Any]] = []
    for t, row in zip(batch.trajectories, rows):
        if row["id"] not in inserted:
            continue
        if t.feedback is not None:
            feedback_rows.append(_feedback_row(t.feedback, row["id"], now))
        for name, value in (t.scores or {}).items():
            score_rows.append(
                _score_row(ScoreIn(name=name, value=value, source=ScoreSource.env), row["id"], now)
                | {"idempotency_key": f"env:{row['id']}:{name}"[:256]}
            )
    late_ids = {f.trajectory_id for f in batch.feedback} | {s.trajectory_id for s in batch.scores}
    late_ids.discard(None)
    if late_ids:
        missing = late_ids - set(rows_ids := [r["id"] for r in rows]) - existing_ids(session, late_ids - set(rows_ids))
        if missing:
            raise NotFound(
                f"Feedback or scores name unknown trajectory id(s): {', '.join(sorted(missing)[:10])}. "
                "Send the trajectory first (or in the same batch); nothing in this batch was stored."
            )
    feedback_rows += [_feedback_row(f, f.trajectory_id, now) for f in batch.feedback]  # type: ignore[arg-type]
    score_rows += [_score_row(s, s.trajectory_id, now) for s in batch.scores]  # type: ignore[arg-type]
    result.feedback_inserted = len(_insert_new(session, Feedback.__table__, feedback_rows, ("idempotency_key",)))
    result.scores_inserted = len(_insert_new(session, Score.__table__, score_rows, ("idempotency_key",)))
    return result


def existing_ids(session: Session, ids: Iterable[str]) -> set[str]:
    ids = list(ids)
    found: set[str] = set()
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        found.update(session.scalars(select(Trajectory.id).where(Trajectory.id.in_(chunk))).all())
    return found


def get_trajectory(session: Session, trajectory_id: str) -> Trajectory:
    row = session.get(Trajectory, trajectory_id)
    if row is None:
        raise NotFound(f"No trajectory with id {trajectory_id!r}.")
    return row


def count_trajectories(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Trajectory)) or 0


def stats(session: Session, *, since: dt.datetime | None = None) -> dict[str, list[dict[str, Any]]]:
    """Trajectory counts by source, by scenario and by day (UTC)."""
    where = [Trajectory.created_at >= since] if since is not None else []
    by_source = session.execute(
        select(Trajectory.source, func.count()).where(*where).group_by(Trajectory.source).order_by(Trajectory.source)
    ).all()
    by_scenario = session.execute(
        select(Trajectory.scenario, func.count())
        .where(*where)
        .group_by(Trajectory.scenario)
        .order_by(func.count().desc(), Trajectory.scenario)
    ).all()
    day = _day_expr(session)
    by_day = session.execute(select(day, func.count()).where(*where).group_by(day).order_by(day)).all()
    by_split = session.execute(
        select(Trajectory.split, func.count()).where(*where).group_by(Trajectory.split).order_by(Trajectory.split)
    ).all()
    return {
        "by_source": [{"source": _val(s), "count": n} for s, n in by_source],
        "by_scenario": [{"scenario": s, "count": n} for s, n in by_scenario],
        "by_day": [{"day": str(d)[:10], "count": n} for d, n in by_day],
        "by_split": [{"split": _val(s), "count": n} for s, n in by_split],
    }


def _val(v: Any) -> Any:
    return getattr(v, "value", v)


def _day_expr(session: Session) -> Any:
    if session.get_bind().dialect.name == "sqlite":
        return func.substr(Trajectory.created_at, 1, 10)
    return func.to_char(func.timezone("UTC", Trajectory.created_at), "YYYY-MM-DD")
