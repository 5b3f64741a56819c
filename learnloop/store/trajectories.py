"""Writes and reads of trajectories, scores and feedback: the queries other stages use."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, Connection, Table, func, select
from sqlalchemy.orm import Session

from learnloop.errors import NotFound, ValidationFailed
from learnloop.ids import new_id
from learnloop.store.models import (
    Feedback,
    Score,
    ScoreSource,
    Source,
    Split,
    Trajectory,
    UTCDateTime,
    utcnow,
)
from learnloop.store.records import (
    FEEDBACK,
    FeedbackIn,
    IngestBatch,
    ScoreIn,
    TrajectoryIn,
    dumps_each,
    orjson,
)

DEFAULT_HOLDOUT_FRACTION = 0.1

# Writes take an ORM session or, where no ORM object is involved (the capture writer), a plain
# connection in a transaction: the session's bookkeeping cost as much per batch as planning it.
Writer = Session | Connection


def _connection(writer: Writer) -> Connection:
    return writer.connection() if isinstance(writer, Session) else writer


def prompt_hash(messages: Sequence[dict[str, Any]]) -> str:
    prompt = []
    text_only = orjson is not None
    for m in messages:  # the prompt: the messages before the first assistant turn
        role = m.get("role")
        if role == "assistant":
            break
        content = m.get("content")
        if text_only and (type(role) is not str or (content is not None and type(content) is not str)):
            text_only = False
        prompt.append({"content": content, "role": role})
    if text_only:
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


def _insert_new(session: Writer, table: Table, rows: list[dict[str, Any]], unique: Sequence[str]) -> int:
    """Insert the rows whose unique values are neither stored nor repeated earlier in ``rows``; return how many.

    ``ON CONFLICT DO NOTHING`` skips a key already stored (by anyone, committed before ours on
    PostgreSQL) and the driver's rowcount says how many rows went in. The rows (all with the
    same keys) go to the driver as multi-row ``INSERT ... VALUES`` statements of values
    converted as the column types would (see ``_converters``), without SQLAlchemy's per-row
    work or a lookup of the known keys first (that lookup cost as much as the insert).
    """
    new = _dedupe_in_batch(rows, unique)
    if not new:
        return 0
    conn = _connection(session)
    names = list(new[0])
    convert = _converters(table, conn.dialect, names)
    columns = [convert[c]([r[c] for r in new]) if c in convert else [r[c] for r in new] for c in names]
    return _values_insert(conn, table, names, list(zip(*columns)))


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f'"{c}"' for c in names)


_MAX_PARAMETERS = 30_000  # per statement: under SQLite's 32,766 and PostgreSQL's 65,535


def _values_insert(conn: Connection, table: Table, names: Sequence[str], params: list[tuple[Any, ...]]) -> int:
    """``INSERT ... VALUES (...), (...) ON CONFLICT DO NOTHING`` of ``params`` (rows of values for
    ``names``), in as few statements as the parameter limits allow; returns how many rows were stored.

    On SQLite not ``executemany``: Python's sqlite3 releases the GIL around each row's step, and
    each time an app or writer thread holding it makes this thread wait for the interpreter's
    switch interval (5 ms); one statement per batch waits once. On PostgreSQL ``executemany``:
    psycopg sends the rows in one pipeline, and parses a query text only once, where a
    statement of as many placeholders as values was parsed anew for every batch size (a
    quarter of the ingest's time, measured).
    """
    pg = conn.dialect.name == "postgresql"
    mark = "%s" if pg else "?"
    json_cols = {c for c in names if isinstance(table.c[c].type, JSON)}
    one = "(" + ", ".join(f"{mark}::jsonb" if pg and c in json_cols else mark for c in names) + ")"
    head = f'INSERT INTO "{table.name}" ({_quoted(names)}) VALUES '
    if pg:
        return conn.exec_driver_sql(head + one + " ON CONFLICT DO NOTHING", params).rowcount
    per_statement = max(1, _MAX_PARAMETERS // max(1, len(names)))
    stored = 0
    for start in range(0, len(params), per_statement):
        chunk = params[start : start + per_statement]
        sql = head + ", ".join([one] * len(chunk)) + " ON CONFLICT DO NOTHING"
        stored += conn.exec_driver_sql(sql, tuple(v for r in chunk for v in r)).rowcount
    return stored


_TRAJECTORY_COLUMNS = ("id", "idempotency_key", "project", "scenario", "group_id", "window_id", "agent", "source",
                       "model", "model_version", "messages", "tools", "metadata", "tags", "prompt_hash", "split",
                       "created_at", "ingested_at")
_PG_ARRAY_TYPES = {"created_at": "timestamptz[]", "ingested_at": "timestamptz[]"}


def _insert_trajectories(session: Writer, plan: IngestPlan) -> list[int]:
    """The plan's trajectory rows into the database, without SQLAlchemy's per-row, per-column work.

    The rows go to the driver as the plan's converted columns (see ``plan_ingest``). Returns the
    positions (in ``plan.ids``) of the rows really stored:

    * SQLite: the write lock is held since ``BEGIN IMMEDIATE``, so nobody else writes meanwhile;
      the rows go in with multi-row ``INSERT ... VALUES`` (``_values_insert``), whose rowcount
      tells whether all were new (see below; a lookup of the known keys settles the rare batch
      where some were not).
    * PostgreSQL: one ``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING RETURNING``
      (one statement, one round trip, no lookup): a key stored earlier, or by a concurrent
      writer that commits first, is skipped, and ``RETURNING`` names exactly the rows stored.
      The arrays go in binary (``%b``): psycopg's text-format array dumper escapes each element
      with a regex in Python, three times slower (measured).
    """
    new, columns = plan.new, plan.columns
    if not new:
        return new
    conn = _connection(session)
    if conn.dialect.name != plan.dialect:
        raise ValueError(f"this ingest plan was made for {plan.dialect}, not {conn.dialect.name}")
    table = Trajectory.__table__
    ids, keys = columns[_ID], columns[_KEY]
    names = _quoted(_TRAJECTORY_COLUMNS)
    if plan.dialect == "postgresql":
        arrays = ", ".join(
            f"%b::{_PG_ARRAY_TYPES.get(c, 'text[]::jsonb[]' if isinstance(table.c[c].type, JSON) else 'text[]')}"
            for c in _TRAJECTORY_COLUMNS
        )
        sql = (f'INSERT INTO "{table.name}" ({names}) SELECT * FROM unnest({arrays}) '
               f'ON CONFLICT DO NOTHING RETURNING "id"')
        if plan.before_insert is not None:
            plan.before_insert()
        stored = set(conn.exec_driver_sql(sql, tuple(columns)).scalars())
        return [pos for pos, tid in zip(new, ids) if tid in stored]

    params = list(zip(*columns))
    # Optimistic: insert everything in a savepoint. The rowcount is sqlite3_changes(): 1 for a
    # stored row and 0 for one ON CONFLICT skipped (triggers do not count), so equal to
    # len(new) means all of them are stored. Only otherwise (a redelivery) are the known keys
    # looked up and the insert redone without them.
    conn.exec_driver_sql('SAVEPOINT "learnloop_ingest"')
    if plan.before_insert is not None:
        plan.before_insert()
    if _values_insert(conn, table, _TRAJECTORY_COLUMNS, params) == len(new):
        conn.exec_driver_sql('RELEASE "learnloop_ingest"')
        return new
    conn.exec_driver_sql('ROLLBACK TO "learnloop_ingest"')
    conn.exec_driver_sql('RELEASE "learnloop_ingest"')
    seen_ids = _known(session, table.c.id, ids)
    seen_keys = _known(session, table.c.idempotency_key, keys)
    keep = [k for k in range(len(new)) if ids[k] not in seen_ids and keys[k] not in seen_keys]
    if keep:
        _values_insert(conn, table, _TRAJECTORY_COLUMNS, [params[k] for k in keep])
    return [new[k] for k in keep]


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


def _known(session: Writer, column: Any, values: list[Any]) -> set[Any]:
    found: set[Any] = set()
    for i in range(0, len(values), 500):
        found.update(session.execute(select(column).where(column.in_(values[i : i + 500]))).scalars())
    return found


def _converters(table: Table, dialect: Any, names: Sequence[str] = _TRAJECTORY_COLUMNS) -> dict[str, Callable[[list[Any]], list[Any]]]:
    """Per column, what turns a column of Python values into the driver's: JSON columns by the
    wire encoder (JSON ``null`` for None, as SQLAlchemy's ``JSON`` does), columns with a bind
    processor (enums, datetimes, booleans) by that processor, once per distinct value (a batch
    has few distinct enum values and one ``now``)."""
    out: dict[str, Callable[[list[Any]], list[Any]]] = {}
    for name in names:
        if isinstance(table.c[name].type, JSON):
            out[name] = dumps_each
            continue
        proc = table.c[name].type._cached_bind_processor(dialect)
        if isinstance(table.c[name].type, UTCDateTime) and proc is not None:
            # Every trajectory has its own created_at: the processor would run once per row.
            out[name] = functools.partial(_utc_datetimes, dialect.name == "sqlite", proc)
        elif proc is not None:
            out[name] = functools.partial(_by_distinct_value, proc)
    return out


_ZERO = dt.timedelta(0)


def _utc_datetimes(sqlite: bool, proc: Callable[[Any], Any], values: list[Any]) -> list[Any]:
    """A column of ``UTCDateTime`` values as its bind processor converts them, the usual case
    (UTC, as the recorder and ``utcnow`` stamp them) without it: a quarter of the cost of
    planning a batch went to running the processor per row (measured). SQLite's text is the
    processor's ``YYYY-MM-DD HH:MM:SS.ffffff``, which ``isoformat`` writes for a naive or UTC
    value when asked for microseconds; PostgreSQL takes a UTC datetime as it is."""
    out = []
    for v in values:
        if isinstance(v, dt.datetime) and (v.utcoffset() == _ZERO or (sqlite and v.tzinfo is None)):
            out.append(v.isoformat(" ", "microseconds")[:26] if sqlite else v)
        else:  # another zone, naive on PostgreSQL, None
            out.append(proc(v))
    return out


def _by_distinct_value(proc: Callable[[Any], Any], values: list[Any]) -> list[Any]:
    try:
        converted = {v: proc(v) for v in set(values)}
    except TypeError:  # unhashable: convert each
        return [proc(v) for v in values]
    return list(map(converted.__getitem__, values))


def trajectory_row(t: TrajectoryIn, project: str, holdout_fraction: float, now: dt.datetime) -> dict[str, Any]:
    """The table row for ``t`` (a validated record: its dicts are stored as they are)."""
    return {name: values[0] for name, values in trajectory_columns([t], project, holdout_fraction, now).items()}


def trajectory_columns(trajectories: Sequence[TrajectoryIn], project: str, holdout_fraction: float,
                       now: dt.datetime) -> dict[str, list[Any]]:
    """The table rows for ``trajectories``, a list per column (_TRAJECTORY_COLUMNS): absent fields
    take their defaults, and the prompt hash and split are derived.

    Built a column at a time because it runs for every trajectory stored: one comprehension per
    column costs about half of building a dict per row (measured)."""
    ids = [t.get("id") or new_id() for t in trajectories]
    messages = [t["messages"] for t in trajectories]
    hashes = [prompt_hash(m) for m in messages]
    groups = [t.get("group") for t in trajectories]
    return {
        "id": ids,
        "idempotency_key": [t.get("idempotency_key") or tid for t, tid in zip(trajectories, ids)],
        "project": [t.get("project") or project for t in trajectories],
        "scenario": [t.get("scenario") for t in trajectories],
        "group_id": groups,
        "window_id": [t.get("window") for t in trajectories],
        "agent": [t.get("agent") for t in trajectories],
        "source": [t.get("source") or Source.production for t in trajectories],
        "model": [t.get("model") for t in trajectories],
        "model_version": [t.get("model_version") for t in trajectories],
        "messages": messages,
        "tools": [t.get("tools") for t in trajectories],
        "metadata": [t.get("metadata") or {} for t in trajectories],
        "tags": [t.get("tags") or [] for t in trajectories],
        "prompt_hash": hashes,
        "split": [assign_split(g or h, holdout_fraction) for g, h in zip(groups, hashes)],
        "created_at": [t.get("created_at") or now for t in trajectories],
        "ingested_at": [now] * len(trajectories),
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


@dataclass(eq=False)
class IngestPlan:
    """A validated batch turned into what the database takes, built outside any transaction.

    Everything per row that is pure Python (defaults, prompt hash and split, JSON encoding of
    the JSON columns, the column types' conversions) happens here, so the capture writer can
    plan the next batch while the database writes the current one. The plan keeps strings and
    a few lists, not the records' dicts: a plan waiting its turn costs the garbage collector
    nothing to traverse. ``ingested_at`` is set when the plan is applied.
    """

    dialect: str
    ids: list[str]  # every trajectory's id, in batch order (a repeat keeps its place)
    new: list[int]  # positions in ``ids`` of the first copy of each id and key: what is inserted
    columns: list[list[Any]]  # the rows at ``new`` converted for the driver, one list per _TRAJECTORY_COLUMNS
    attached: dict[int, tuple[FeedbackIn | None, dict[str, float]]]  # position: feedback and scores sent inside it
    feedback: list[FeedbackIn]
    scores: list[ScoreIn]
    created: dt.datetime  # the time given to records without created_at
    convert_ingested_at: Callable[[list[Any]], list[Any]]
    before_insert: Callable[[], None] | None = None  # called right before the insert, the longest wait


_ID, _KEY, _INGESTED_AT = (_TRAJECTORY_COLUMNS.index(c) for c in ("id", "idempotency_key", "ingested_at"))


def _refuse_unencodable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Text that is not valid Unicode (a lone UTF-16 surrogate, as a JSON ``\\ud83d`` escape
    can carry) cannot be stored: a clear refusal of the batch, not an internal error."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UnicodeEncodeError as exc:
            bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else "?"
            raise ValidationFailed(
                f"Text in this batch is not valid Unicode: a string holds the lone UTF-16 surrogate {bad!r} "
                "(half of a character, e.g. an emoji cut in two). Send the text as valid UTF-8 or replace "
                "that character; nothing in this batch was stored."
            ) from None

    return wrapper


@_refuse_unencodable
def plan_ingest(
    batch: IngestBatch,
    dialect: Any,
    *,
    project: str = "default",
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
) -> IngestPlan:
    """Plan the insert of ``batch`` for ``dialect`` (a SQLAlchemy dialect); no database access."""
    now = utcnow()
    trajectories = batch.get("trajectories") or []
    by_column = trajectory_columns(trajectories, project, holdout_fraction, now)
    ids, keys = by_column["id"], by_column["idempotency_key"]
    if len(set(ids)) == len(ids) and len(set(keys)) == len(keys):
        new = list(range(len(ids)))
    else:  # a trajectory repeated within the batch: only its first copy is inserted
        pairs = [{"id": tid, "idempotency_key": key, "at": i} for i, (tid, key) in enumerate(zip(ids, keys))]
        new = [p["at"] for p in _dedupe_in_batch(pairs, ("id", "idempotency_key"))]
        by_column = {name: [values[i] for i in new] for name, values in by_column.items()}
    convert = _converters(Trajectory.__table__, dialect)
    # ingested_at is set (and converted) by apply_plan, when the rows really go in.
    columns = [convert[c](by_column[c]) if c in convert and c != "ingested_at" else by_column[c]
               for c in _TRAJECTORY_COLUMNS]
    attached = {
        i: (t.get("feedback"), t.get("scores") or {})
        for i, t in enumerate(trajectories)
        if t.get("feedback") is not None or t.get("scores")
    }
    return IngestPlan(dialect.name, ids, new, columns, attached, batch.get("feedback") or [],
                      batch.get("scores") or [], now, convert["ingested_at"])


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
    plan = plan_ingest(batch, _connection(session).dialect, project=project, holdout_fraction=holdout_fraction)
    return apply_plan(session, plan)


@_refuse_unencodable
def apply_plan(session: Writer, plan: IngestPlan) -> IngestResult:
    """Store a planned batch in the caller's transaction, as ``ingest`` does."""
    now = utcnow()
    if plan.new:
        plan.columns[_INGESTED_AT] = plan.convert_ingested_at([now]) * len(plan.new)
    result = IngestResult()
    # By position, not by id: a trajectory repeated within the batch is a duplicate of its first copy.
    inserted = set(_insert_trajectories(session, plan))
    for i, tid in enumerate(plan.ids):
        (result.inserted if i in inserted else result.duplicates).append(tid)

    feedback_rows: list[dict[str, Any]] = []
    score_rows: list[dict[str, Any]] = []
    for i, (feedback, scores) in plan.attached.items():
        if i not in inserted:
            continue
        tid = plan.ids[i]
        if feedback is not None:
            feedback_rows.append(_feedback_row(feedback, tid, plan.created))
        for name, value in scores.items():
            score = ScoreIn(name=name, value=value, source=ScoreSource.env, idempotency_key=f"env:{tid}:{name}"[:256])
            score_rows.append(_score_row(score, tid, now))
    late_feedback, late_scores = plan.feedback, plan.scores
    late_ids = {f.get("trajectory_id") for f in late_feedback} | {s.get("trajectory_id") for s in late_scores}
    late_ids.discard(None)
    if late_ids:
        missing = late_ids - set(plan.ids) - existing_ids(session, late_ids - set(plan.ids))
        if missing:
            raise NotFound(
                f"Feedback or scores name unknown trajectory id(s): {', '.join(sorted(missing)[:10])}. "
                "Send the trajectory first (or in the same batch); nothing in this batch was stored."
            )
    feedback_rows += [_feedback_row(f, f["trajectory_id"], plan.created) for f in late_feedback]  # type: ignore[typeddict-item]
    score_rows += [_score_row(s, s["trajectory_id"], now) for s in late_scores]  # type: ignore[typeddict-item]
    result.feedback_inserted = _insert_new(session, Feedback.__table__, feedback_rows, ("idempotency_key",))
    result.scores_inserted = _insert_new(session, Score.__table__, score_rows, ("idempotency_key",))
    return result


def existing_ids(session: Writer, ids: Iterable[str]) -> set[str]:
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
