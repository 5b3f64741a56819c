"""Writes and reads of trajectories, scores and feedback: the queries other stages use."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from learnloop.errors import NotFound
from learnloop.ids import new_id
from learnloop.store.models import Feedback, Score, ScoreSource, Source, Split, Trajectory, utcnow
from learnloop.store.query import chunks, insert_ignoring_duplicates
from learnloop.store.records import FEEDBACK, FeedbackIn, IngestBatch, ScoreIn, TrajectoryIn

DEFAULT_HOLDOUT_FRACTION = 0.1

# Writes take an ORM session or a plain connection in a transaction (the capture writer needs no ORM).
Writer = Session | Connection


def _connection(writer: Writer) -> Connection:
    return writer.connection() if isinstance(writer, Session) else writer


def prompt_hash(messages: Sequence[dict[str, Any]]) -> str:
    """A hash of the prompt: the messages before the first assistant turn, roles and content only."""
    prompt = []
    for m in messages:
        if m.get("role") == "assistant":
            break
        prompt.append({"content": m.get("content"), "role": m.get("role")})
    # This exact encoding is frozen: stored rows' prompt hashes and splits were computed with it.
    canonical = json.dumps(prompt, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
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


def insert_new(writer: Writer, table: Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert the rows whose unique values (primary key, unique columns) are neither stored nor
    repeated earlier in ``rows``; return the rows inserted (feedback and scores: only their
    number is reported).

    The stored values are looked up first, then the new rows go in with one
    ``INSERT ... ON CONFLICT DO NOTHING`` (``executemany``): a row a concurrent writer commits
    between the two is skipped by the database but counted here. Not ``RETURNING``: SQLAlchemy
    then sends the rows as one multi-row statement whose thousands of placeholders psycopg
    parses in Python, three times the cost of the rest of the insert (benchmarks/README.md).
    """
    if not rows:
        return []
    unique = [c.name for c in table.columns if (c.primary_key or c.unique) and c.name in rows[0]]
    stored = {name: existing(writer, table.c[name], [r[name] for r in rows]) for name in unique}
    fresh = _first_of_each(rows, unique, stored)
    if fresh:
        _connection(writer).execute(insert_ignoring_duplicates(writer, table), fresh)
    return fresh


def _insert_trajectories(writer: Writer, rows: list[dict[str, Any]], now: dt.datetime) -> set[str]:
    """Insert the trajectory rows (all stamped ``ingested_at = now``); return the ids this call stored.

    ``INSERT ... ON CONFLICT DO NOTHING`` skips a row whose id or idempotency key is stored
    already, by an earlier batch or by a concurrent writer that commits first. The rows this call
    stored are then exactly those found under their id with this call's ``ingested_at``: the same
    answer ``RETURNING`` gives, without its cost (see ``insert_new``).
    """
    unique = ["id", "idempotency_key"]
    fresh = _first_of_each(rows, unique, {name: set() for name in unique})
    if not fresh:
        return set()
    _connection(writer).execute(insert_ignoring_duplicates(writer, Trajectory.__table__), fresh)
    return existing(writer, Trajectory.id, [r["id"] for r in fresh], Trajectory.ingested_at == now)


def _first_of_each(
    rows: list[dict[str, Any]], unique: list[str], seen: dict[str, set[Any]]
) -> list[dict[str, Any]]:
    """The rows none of whose unique values is in ``seen`` or in an earlier row (``seen`` grows)."""
    out = []
    for r in rows:
        values = [(name, r[name]) for name in unique]
        if any(v is not None and v in seen[name] for name, v in values):
            continue
        for name, v in values:
            seen[name].add(v)
        out.append(r)
    return out


def existing(writer: Writer, column: Any, values: Iterable[Any], *where: Any) -> set[Any]:
    """Which of ``values`` are stored in ``column`` (in rows that also match ``where``)."""
    wanted = sorted({v for v in values if v is not None})
    if not wanted:
        return set()
    if _connection(writer).dialect.name == "postgresql":
        # One array parameter: an IN list of hundreds of placeholders took PostgreSQL (and
        # psycopg's placeholder parsing) 2-6 times as long to answer.
        values_param = bindparam("values", wanted, type_=ARRAY(column.type))
        return set(writer.execute(select(column).where(column == any_(values_param), *where)).scalars())
    found: set[Any] = set()
    for chunk in chunks(wanted):
        found.update(writer.execute(select(column).where(column.in_(chunk), *where)).scalars())
    return found


def trajectory_row(
    t: TrajectoryIn, project: str, holdout_fraction: float, now: dt.datetime
) -> dict[str, Any]:
    """The table row for ``t`` (a validated record): absent fields take their defaults, and the
    prompt hash and split are derived."""
    tid = t.get("id") or new_id()
    hashed = prompt_hash(t["messages"])
    group = t.get("group")
    return {
        "id": tid,
        "idempotency_key": t.get("idempotency_key") or tid,
        "project": t.get("project") or project,
        "scenario": t.get("scenario"),
        "group_id": group,
        "window_id": t.get("window"),
        "agent": t.get("agent"),
        "source": t.get("source") or Source.production,
        "model": t.get("model"),
        "model_version": t.get("model_version"),
        "messages": t["messages"],
        "tools": t.get("tools"),
        "metadata": t.get("metadata") or {},
        "tags": t.get("tags") or [],
        "prompt_hash": hashed,
        "split": assign_split(group or hashed, holdout_fraction),
        "created_at": t.get("created_at") or now,
        "ingested_at": now,
    }


# Every field of a feedback record, absent ones as their defaults: the content key hashes this
# full shape, so that the same feedback always gets the same key however it was spelt.
_FEEDBACK_SHAPE: dict[str, Any] = {k: None for k in FeedbackIn.__annotations__ if k != "idempotency_key"} | {
    "metadata": {}
}


def _feedback_row(f: FeedbackIn, trajectory_id: str, now: dt.datetime) -> dict[str, Any]:
    key = f.get("idempotency_key")
    if not key:
        dumped = FEEDBACK.dump_python(f, mode="json")
        content = _FEEDBACK_SHAPE | {k: v for k, v in dumped.items() if k != "idempotency_key"}
        key = _content_key("fb", trajectory_id, content)
    return {
        "trajectory_id": trajectory_id,
        "idempotency_key": key,
        "rating": f.get("rating"),
        "thumbs": f.get("thumbs"),
        "success": f.get("success"),
        "correction": f.get("correction"),
        "comment": f.get("comment"),
        "author": f.get("author"),
        "metadata": f.get("metadata") or {},
        "created_at": f.get("created_at") or now,
    }


def _score_row(s: ScoreIn, trajectory_id: str, now: dt.datetime) -> dict[str, Any]:
    return {
        "trajectory_id": trajectory_id,
        "name": s["name"],
        "value": s["value"],
        "source": s.get("source") or ScoreSource.env,
        "version": s.get("version"),
        "author": s.get("author"),
        "judge_model": s.get("judge_model"),
        "rationale": s.get("rationale"),
        "idempotency_key": s.get("idempotency_key"),
        "created_at": now,
    }


def _content_key(prefix: str, trajectory_id: str, content: Any) -> str:
    # Feedback without a caller key is deduplicated by content, so a retried send is a no-op.
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:40]
    return f"{prefix}:{trajectory_id}:{digest}"[:128]


def ingest(
    session: Writer,
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
    trajectories = batch.get("trajectories") or []
    rows = [trajectory_row(t, project, holdout_fraction, now) for t in trajectories]
    stored = _insert_trajectories(session, rows, now)

    result = IngestResult()
    feedback_rows: list[dict[str, Any]] = []
    score_rows: list[dict[str, Any]] = []
    for t, row in zip(trajectories, rows, strict=True):
        tid = row["id"]
        if tid not in stored:  # stored before, or a repeat within this batch
            result.duplicates.append(tid)
            continue
        stored.discard(tid)  # a later copy of the same id in this batch is a duplicate
        result.inserted.append(tid)
        if t.get("feedback") is not None:
            feedback_rows.append(_feedback_row(t["feedback"], tid, now))
        for name, value in (t.get("scores") or {}).items():
            key = f"env:{tid}:{name}"[:256]
            score = ScoreIn(name=name, value=value, source=ScoreSource.env, idempotency_key=key)
            score_rows.append(_score_row(score, tid, now))

    late_feedback = batch.get("feedback") or []
    late_scores = batch.get("scores") or []
    _check_trajectories_exist(session, [r["id"] for r in rows], [*late_feedback, *late_scores])
    feedback_rows += [_feedback_row(f, f["trajectory_id"], now) for f in late_feedback]  # type: ignore[typeddict-item]
    score_rows += [_score_row(s, s["trajectory_id"], now) for s in late_scores]  # type: ignore[typeddict-item]
    result.feedback_inserted = len(insert_new(session, Feedback.__table__, feedback_rows))
    result.scores_inserted = len(insert_new(session, Score.__table__, score_rows))
    return result


def _check_trajectories_exist(session: Writer, in_batch: list[str], late: list[FeedbackIn | ScoreIn]) -> None:
    named = {item.get("trajectory_id") for item in late} - {None} - set(in_batch)
    missing = named - existing_ids(session, named)
    if missing:
        raise NotFound(
            f"Feedback or scores name unknown trajectory id(s): {', '.join(sorted(missing)[:10])}. "
            "Send the trajectory first (or in the same batch); nothing in this batch was stored."
        )


def existing_ids(session: Writer, ids: Iterable[str]) -> set[str]:
    return existing(session, Trajectory.id, ids)


def get_trajectory(session: Session, trajectory_id: str) -> Trajectory:
    row = session.get(Trajectory, trajectory_id)
    if row is None:
        raise NotFound(f"No trajectory with id {trajectory_id!r}.")
    return row


def count_trajectories(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Trajectory)) or 0


def stats(
    session: Session, *, since: dt.datetime | None = None, agent: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Trajectory counts by source, by scenario, by agent and by day (UTC); ``agent`` keeps only
    that agent's."""
    where = [Trajectory.created_at >= since] if since is not None else []
    if agent is not None:
        where.append(Trajectory.agent == agent)
    by_source = session.execute(
        select(Trajectory.source, func.count())
        .where(*where)
        .group_by(Trajectory.source)
        .order_by(Trajectory.source)
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
        select(Trajectory.split, func.count())
        .where(*where)
        .group_by(Trajectory.split)
        .order_by(Trajectory.split)
    ).all()
    by_agent = session.execute(
        select(Trajectory.agent, func.count())
        .where(*where)
        .group_by(Trajectory.agent)
        .order_by(func.count().desc(), Trajectory.agent)
    ).all()
    return {
        "by_source": [{"source": _val(s), "count": n} for s, n in by_source],
        "by_scenario": [{"scenario": s, "count": n} for s, n in by_scenario],
        "by_agent": [{"agent": a, "count": n} for a, n in by_agent],
        "by_day": [{"day": str(d)[:10], "count": n} for d, n in by_day],
        "by_split": [{"split": _val(s), "count": n} for s, n in by_split],
    }


def _val(v: Any) -> Any:
    return getattr(v, "value", v)


def _day_expr(session: Session) -> Any:
    if session.get_bind().dialect.name == "sqlite":
        return func.substr(Trajectory.created_at, 1, 10)
    return func.to_char(func.timezone("UTC", Trajectory.created_at), "YYYY-MM-DD")
