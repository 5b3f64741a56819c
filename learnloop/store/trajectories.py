"""Writes and reads of trajectories, scores and feedback: the queries other stages use."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from learnloop.errors import NotFound
from learnloop.ids import new_id
from learnloop.store.models import Feedback, Score, ScoreSource, Source, Split, Trajectory, utcnow
from learnloop.store.records import FEEDBACK, FeedbackIn, IngestBatch, ScoreIn, TrajectoryIn, dumps_str, orjson

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
    prompt = [{"content": m.get("content"), "role": m.get("role")} for m in prompt_messages(messages)]
    if orjson is not None and all(type(p["role"]) is str and (p["content"] is None or type(p["content"]) is str)
                                  for p in prompt):
        # Text-only prompts (the usual case): orjson writes byte for byte what json.dumps below
        # writes for strings and null with the keys already in sorted order (tested over every
        # code point), at a fraction of the cost. Anything else takes the reference encoder.
        try:
            canonical = orjson.dumps(prompt)
        except TypeError:  # lone surrogates: let the reference encoder decide
            pass
        else:
            return hashlib.sha256(canonical).hexdigest()[:32]
    return _prompt_hash_reference(prompt)


def _prompt_hash_reference(prompt: list[dict[str, Any]]) -> str:
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


def _insert_new(session: Session, table: Table, rows: list[dict[str, Any]], unique: Sequence[str]) -> list[dict[str, Any]]:
    """Insert the rows whose unique values are neither stored nor repeated earlier in ``rows``; return them.

    Known keys are looked up first so most duplicates never reach the insert. ``ON CONFLICT
    DO NOTHING`` guards against a concurrent writer inserting the same key between the lookup
    and the insert.
    """
    stored = {col: _known(session, table.c[col], list({r[col] for r in rows if r.get(col) is not None})) for col in unique}
    new = _dedupe_in_batch(
        [r for r in rows if not any(r.get(col) is not None and r[col] in stored[col] for col in unique)], unique
    )
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
    inserted = session.execute(postgresql.insert(table).on_conflict_do_nothing().returning(*cols), new).all()
    returned = [{row[i] for row in inserted} for i in range(len(unique))]
    return [
        r
        for r in new
        if all(r.get(col) is None for col in unique)
        or any(r.get(col) is not None and r[col] in returned[i] for i, col in enumerate(unique))
    ]


_TRAJECTORY_COLUMNS = ("id", "idempotency_key", "project", "scenario", "group_id", "window_id", "agent", "source",
                       "model", "model_version", "messages", "tools", "metadata", "tags", "prompt_hash", "split",
                       "created_at", "ingested_at")
_JSON_COLUMNS = frozenset({"messages", "tools", "metadata", "tags"})
_PG_ARRAY_TYPES = {"created_at": "timestamptz[]", "ingested_at": "timestamptz[]"}


def _insert_trajectories(session: Session, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``_insert_new`` for trajectory rows, without SQLAlchemy's per-row, per-column work.

    The rows go to the driver as plain tuples, converted here the way the column types would
    convert them (JSON columns encoded once with the wire format's encoder, JSON ``null`` for
    None as SQLAlchemy's ``JSON`` does; enums and datetimes through the columns' own bind
    processors, once per distinct value). Returns the rows really stored, like ``_insert_new``:

    * SQLite: the write lock is held since ``BEGIN IMMEDIATE``, so nobody else writes meanwhile;
      the rows go in with one ``executemany``, whose rowcount tells whether all were new (see
      below; a lookup of the known keys settles the rare batch where some were not).
    * PostgreSQL: one ``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING RETURNING``
      (one statement, one round trip, no lookup): a key stored earlier, or by a concurrent
      writer that commits first, is skipped, and ``RETURNING`` names exactly the rows stored.
      The arrays go in binary (``%b``): psycopg's text-format array dumper escapes each element
      with a regex in Python, three times slower (measured).
    """
    new = _dedupe_in_batch(rows, ("id", "idempotency_key"))
    if not new:
        return new
    conn = session.connection()
    dialect = conn.dialect
    table = Trajectory.__table__
    convert = _converters(table, dialect)
    columns = [[convert[c](r[c]) for r in new] if c in convert else [r[c] for r in new] for c in _TRAJECTORY_COLUMNS]
    names = ", ".join(f'"{c}"' for c in _TRAJECTORY_COLUMNS)
    if dialect.name == "postgresql":
        arrays = ", ".join(
            f"%b::{_PG_ARRAY_TYPES.get(c, 'text[]::jsonb[]' if c in _JSON_COLUMNS else 'text[]')}" for c in _TRAJECTORY_COLUMNS
        )
        sql = (f'INSERT INTO "{table.name}" ({names}) SELECT * FROM unnest({arrays}) '
               f'ON CONFLICT DO NOTHING RETURNING "id"')
        stored = set(conn.exec_driver_sql(sql, tuple(columns)).scalars())
        return [r for r in new if r["id"] in stored]

    sql = f'INSERT INTO "{table.name}" ({names}) VALUES ({", ".join("?" * len(_TRAJECTORY_COLUMNS))}) ON CONFLICT DO NOTHING'
    params = list(zip(*columns))
    # Optimistic: insert everything in a savepoint. The rowcount of an executemany is the sum
    # of sqlite3_changes() of its statements, 1 for a stored row and 0 for one ON CONFLICT
    # skipped (triggers do not count), so equal to len(new) means all of them are stored. Only
    # otherwise (a redelivery) are the known keys looked up and the insert redone without them.
    conn.exec_driver_sql('SAVEPOINT "learnloop_ingest"')
    if conn.exec_driver_sql(sql, params).rowcount == len(new):
        conn.exec_driver_sql('RELEASE "learnloop_ingest"')
        return new
    conn.exec_driver_sql('ROLLBACK TO "learnloop_ingest"')
    conn.exec_driver_sql('RELEASE "learnloop_ingest"')
    seen_ids = _known(session, table.c.id, [r["id"] for r in new])
    seen_keys = _known(session, table.c.idempotency_key, [r["idempotency_key"] for r in new])
    keep = [i for i, r in enumerate(new) if r["id"] not in seen_ids and r["idempotency_key"] not in seen_keys]
    if keep:
        conn.exec_driver_sql(sql, [params[i] for i in keep])
    return [new[i] for i in keep]


def _dedupe_in_batch(rows: list[dict[str, Any]], unique: Sequence[str]) -> list[dict[str, Any]]:
    """The rows whose unique values were not seen earlier in ``rows`` (the first one wins)."""
    seen: list[set[Any]] = [set() for _ in unique]
    out = []
    for r in rows:
        values = [r.get(col) for col in unique]
        if any(v is not None and v in s for v, s in zip(values, seen)):
            continue
        for v, s in zip(values, seen):
            if v is not None:
                s.add(v)
        out.append(r)
    return out


def _known(session: Session, column: Any, values: list[Any]) -> set[Any]:
    found: set[Any] = set()
    for i in range(0, len(values), 500):
        found.update(session.execute(select(column).where(column.in_(values[i : i + 500]))).scalars())
    return found


def _converters(table: Table, dialect: Any) -> dict[str, Any]:
    """Per column, what turns a Python value into the driver's: JSON columns by the wire encoder,
    columns with a bind processor (enums, datetimes) by that processor, memoised per value (a
    batch has few distinct enum values and one ``now``)."""
    out: dict[str, Any] = {}
    for name in _TRAJECTORY_COLUMNS:
        if name in _JSON_COLUMNS:
            out[name] = dumps_str
            continue
        proc = table.c[name].type._cached_bind_processor(dialect)
        if proc is not None:
            out[name] = _memoised(proc)
    return out


def _memoised(proc: Any) -> Any:
    memo: dict[Any, Any] = {}

    def convert(value: Any) -> Any:
        try:
            return memo[value]
        except KeyError:
            out = memo[value] = proc(value)
            return out
        except TypeError:  # unhashable: convert each time
            return proc(value)

    return convert


def trajectory_row(t: TrajectoryIn, project: str, holdout_fraction: float, now: dt.datetime) -> dict[str, Any]:
    """The table row for ``t`` (a validated record: its dicts are stored as they are)."""
    get = t.get
    tid = get("id") or new_id()
    messages = t["messages"]
    phash = prompt_hash(messages)
    group = get("group")
    return {
        "id": tid,
        "idempotency_key": get("idempotency_key") or tid,
        "project": get("project") or project,
        "scenario": get("scenario"),
        "group_id": group,
        "window_id": get("window"),
        "agent": get("agent"),
        "source": get("source") or Source.production,
        "model": get("model"),
        "model_version": get("model_version"),
        "messages": messages,
        "tools": get("tools"),
        "metadata": get("metadata") or {},
        "tags": get("tags") or [],
        "prompt_hash": phash,
        "split": assign_split(group or phash, holdout_fraction),
        "created_at": get("created_at") or now,
        "ingested_at": now,
    }


# Every field of a feedback record, absent ones as their defaults: the content key hashes this
# full shape, so that the same feedback always gets the same key however it was spelt.
_FEEDBACK_SHAPE: dict[str, Any] = {k: None for k in FeedbackIn.__annotations__ if k != "idempotency_key"} | {"metadata": {}}


def _feedback_row(f: FeedbackIn, trajectory_id: str, now: dt.datetime) -> dict[str, Any]:
    get = f.get
    key = get("idempotency_key")
    if not key:
        content = _FEEDBACK_SHAPE | {k: v for k, v in FEEDBACK.dump_python(f, mode="json").items() if k != "idempotency_key"}
        key = _content_key("fb", trajectory_id, content)
    return {
        "trajectory_id": trajectory_id,
        "idempotency_key": key,
        "rating": get("rating"),
        "thumbs": get("thumbs"),
        "success": get("success"),
        "correction": get("correction"),
        "comment": get("comment"),
        "author": get("author"),
        "metadata": get("metadata") or {},
        "created_at": get("created_at") or now,
    }


def _score_row(s: ScoreIn, trajectory_id: str, now: dt.datetime) -> dict[str, Any]:
    get = s.get
    return {
        "trajectory_id": trajectory_id,
        "name": s["name"],
        "value": s["value"],
        "source": get("source") or ScoreSource.env,
        "version": get("version"),
        "author": get("author"),
        "judge_model": get("judge_model"),
        "rationale": get("rationale"),
        "idempotency_key": get("idempotency_key"),
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
    trajectories = batch.get("trajectories") or []
    late_feedback = batch.get("feedback") or []
    late_scores = batch.get("scores") or []
    rows = [trajectory_row(t, project, holdout_fraction, now) for t in trajectories]
    # By row, not by id: a trajectory repeated within the batch is a duplicate of its first copy.
    inserted = {id(r) for r in _insert_trajectories(session, rows)}
    for row in rows:
        (result.inserted if id(row) in inserted else result.duplicates).append(row["id"])

    feedback_rows: list[dict[str, Any]] = []
    score_rows: list[dict[str, Any]] = []
    for t, row in zip(trajectories, rows):
        if id(row) not in inserted:
            continue
        if t.get("feedback") is not None:
            feedback_rows.append(_feedback_row(t["feedback"], row["id"], now))  # type: ignore[arg-type]
        for name, value in (t.get("scores") or {}).items():
            score = ScoreIn(name=name, value=value, source=ScoreSource.env, idempotency_key=f"env:{row['id']}:{name}"[:256])
            score_rows.append(_score_row(score, row["id"], now))
    late_ids = {f.get("trajectory_id") for f in late_feedback} | {s.get("trajectory_id") for s in late_scores}
    late_ids.discard(None)
    if late_ids:
        missing = late_ids - set(rows_ids := [r["id"] for r in rows]) - existing_ids(session, late_ids - set(rows_ids))
        if missing:
            raise NotFound(
                f"Feedback or scores name unknown trajectory id(s): {', '.join(sorted(missing)[:10])}. "
                "Send the trajectory first (or in the same batch); nothing in this batch was stored."
            )
    feedback_rows += [_feedback_row(f, f["trajectory_id"], now) for f in late_feedback]  # type: ignore[typeddict-item]
    score_rows += [_score_row(s, s["trajectory_id"], now) for s in late_scores]  # type: ignore[typeddict-item]
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
