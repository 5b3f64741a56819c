"""LLM call spans received over OTLP: the ones waiting for their trace's root span, and the ones
already stored in a trajectory.

An exporter sends spans as they end, in batches: the calls of an agent run usually reach the
server one or more exports before the run's root span. Such a call waits here (its content in
``call``, ``trajectory_id`` null) until the export holding the root assembles the run, or until the
run timeout stores what arrived. Every call taken is remembered by its (trace id, span id) for a
day, with the trajectory it went into (its content dropped), so a resent export, whole or in parts,
never starts a second trajectory.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import bindparam, delete, select, tuple_, update
from sqlalchemy.orm import Session

from learnloop.store.models import OtlpCall, utcnow
from learnloop.store.query import chunks, insert_ignoring_duplicates

# How long a taken call is remembered (exporters give up on a batch within minutes).
KEEP_ASSEMBLED = dt.timedelta(days=1)

SpanKey = tuple[str, str]  # (trace id, span id), lower-case hex


def spans_of(session: Session, trace_ids: Iterable[str]) -> dict[SpanKey, str | None]:
    """Every call known in ``trace_ids`` and its trajectory id (None: still waiting). The rows are
    locked until the commit on PostgreSQL, so two exports never assemble one run twice."""
    found: dict[SpanKey, str | None] = {}
    for chunk in chunks(sorted(set(trace_ids))):
        rows = session.execute(
            select(OtlpCall.trace_id, OtlpCall.span_id, OtlpCall.trajectory_id)
            .where(OtlpCall.trace_id.in_(chunk))
            .with_for_update()
        )
        found.update({(t, s): tid for t, s, tid in rows})
    return found


def held_calls(session: Session, keys: Iterable[SpanKey]) -> dict[SpanKey, dict[str, Any]]:
    """The content of waiting calls."""
    out: dict[SpanKey, dict[str, Any]] = {}
    for chunk in chunks(sorted(set(keys))):
        pairs = tuple_(OtlpCall.trace_id, OtlpCall.span_id).in_(chunk)
        rows = session.execute(select(OtlpCall.trace_id, OtlpCall.span_id, OtlpCall.call).where(pairs))
        out.update({(t, s): call for t, s, call in rows})
    return out


def add(session: Session, rows: list[dict[str, Any]], now: dt.datetime | None = None) -> None:
    """Add calls (``trace_id``, ``span_id``, ``call``, ``trajectory_id``: None while waiting); a span
    known already is left as it is."""
    if rows:
        now = now or utcnow()
        session.execute(
            insert_ignoring_duplicates(session, OtlpCall.__table__), [{**r, "received_at": now} for r in rows]
        )


def assembled(session: Session, taken: list[tuple[str, str, str]]) -> None:
    """Mark waiting calls ``(trace id, span id, trajectory id)`` as taken; their content is dropped."""
    if taken:
        statement = (
            update(OtlpCall.__table__)
            .where(OtlpCall.trace_id == bindparam("t"), OtlpCall.span_id == bindparam("s"))
            .values(trajectory_id=bindparam("tid"), call={})
        )
        session.connection().execute(statement, [{"t": t, "s": s, "tid": tid} for t, s, tid in taken])


def overdue_traces(session: Session, before: dt.datetime, limit: int = 500) -> list[str]:
    """Traces with a call waiting since before ``before`` (their root span never came)."""
    rows = session.execute(
        select(OtlpCall.trace_id)
        .where(OtlpCall.trajectory_id.is_(None), OtlpCall.received_at < before)
        .distinct()
        .limit(limit)
    )
    return [r[0] for r in rows]


def forget_taken(session: Session, now: dt.datetime | None = None) -> None:
    """Drop the memory of calls taken more than KEEP_ASSEMBLED ago."""
    before = (now or utcnow()) - KEEP_ASSEMBLED
    session.execute(
        delete(OtlpCall).where(OtlpCall.trajectory_id.is_not(None), OtlpCall.received_at < before)
    )
