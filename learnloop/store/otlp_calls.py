"""LLM call spans received over OTLP, held until their trace's root span arrives.

An exporter sends spans as they end, in batches: the calls of an agent run usually reach the
server one or more exports before the run's root span. Each call waits here (one row per span,
``trajectory_id`` null) until the export holding the root assembles the run, or until the run
timeout stores what arrived. Assembled rows are kept a day so that a resent export finds its spans
already taken instead of starting a second trajectory.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.orm import Session

from learnloop.store.models import OtlpCall, utcnow
from learnloop.store.query import chunks, insert_ignoring_duplicates

# How long an assembled call is remembered (exporters give up on a batch within minutes).
KEEP_ASSEMBLED = dt.timedelta(days=1)


def hold(session: Session, calls: list[dict[str, Any]], now: dt.datetime | None = None) -> None:
    """Hold calls (``{"trace_id", "span_id", "call"}``) until their run is assembled; a span held
    or assembled before is left as it is."""
    if not calls:
        return
    now = now or utcnow()
    rows = [{**c, "trajectory_id": None, "received_at": now} for c in calls]
    session.execute(insert_ignoring_duplicates(session, OtlpCall.__table__), rows)


def known_spans(session: Session, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (trace id, span id) pairs are held or assembled already."""
    found: set[tuple[str, str]] = set()
    for chunk in chunks(sorted(set(keys))):
        pairs = tuple_(OtlpCall.trace_id, OtlpCall.span_id).in_(chunk)
        found.update(
            (t, s) for t, s in session.execute(select(OtlpCall.trace_id, OtlpCall.span_id).where(pairs))
        )
    return found


def waiting(session: Session, trace_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """The calls still waiting in each of ``trace_ids``, by trace (locked until the commit on PostgreSQL)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for chunk in chunks(sorted(set(trace_ids))):
        rows = session.execute(
            select(OtlpCall.trace_id, OtlpCall.span_id, OtlpCall.call)
            .where(OtlpCall.trace_id.in_(chunk), OtlpCall.trajectory_id.is_(None))
            .with_for_update()
        )
        for trace_id, span_id, call in rows:
            out.setdefault(trace_id, []).append({"span_id": span_id, **call})
    return out


def overdue_traces(session: Session, before: dt.datetime, limit: int = 500) -> list[str]:
    """Traces with a call waiting since before ``before`` (their root span never came)."""
    rows = session.execute(
        select(OtlpCall.trace_id)
        .where(OtlpCall.trajectory_id.is_(None), OtlpCall.received_at < before)
        .distinct()
        .limit(limit)
    )
    return [r[0] for r in rows]


def assembled(session: Session, trace_id: str, span_ids: Iterable[str], trajectory_id: str) -> None:
    """Mark calls as part of ``trajectory_id`` (they stop waiting)."""
    ids = sorted(set(span_ids))
    if ids:
        session.execute(
            update(OtlpCall)
            .where(OtlpCall.trace_id == trace_id, OtlpCall.span_id.in_(ids))
            .values(trajectory_id=trajectory_id)
        )


def forget_assembled(session: Session, now: dt.datetime | None = None) -> None:
    """Drop assembled calls older than KEEP_ASSEMBLED."""
    before = (now or utcnow()) - KEEP_ASSEMBLED
    session.execute(
        delete(OtlpCall).where(OtlpCall.trajectory_id.is_not(None), OtlpCall.received_at < before)
    )
