"""Traffic counts: requests, tokens and cost each served target answered, per minute and alias.

Serving processes add to them (``add_counts``: one upsert per row, so several servers sharing a
database add up); status, the dashboard, the canary and the demo read them. Every answer is
counted, whether or not its trajectory was kept, so shares stay right when an upstream's answers
are sampled.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from learnloop.store.db import Database
from learnloop.store.models import TrafficCount

_SUMMED = ("requests", "cut", "prompt_tokens", "completion_tokens", "cost")


def minute_of(at: dt.datetime) -> dt.datetime:
    return at.replace(second=0, microsecond=0)


def add_counts(db: Database, rows: Iterable[dict[str, Any]]) -> None:
    """Add each row's counts (``minute``, ``alias``, ``target`` and the summed fields) in one transaction."""
    rows = list(rows)
    if not rows:
        return
    with db.session() as session:
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        table = TrafficCount.__table__
        stmt = insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=["minute", "alias", "target"],
            set_={k: table.c[k] + stmt.excluded[k] for k in _SUMMED},
        )
        session.execute(
            stmt, [{k: r.get(k, 0) for k in ("minute", "alias", "target", *_SUMMED)} for r in rows]
        )


@dataclass
class TargetTraffic:
    alias: str
    target: str
    requests: int
    cut: int
    prompt_tokens: int
    completion_tokens: int
    cost: float

    @property
    def cost_per_request(self) -> float | None:
        return self.cost / self.requests if self.requests else None


def totals(
    session: Session, *, since: dt.datetime | None = None, alias: str | None = None
) -> list[TargetTraffic]:
    """Counts per (alias, target) since a time (all time when None)."""
    c = TrafficCount
    query = select(
        c.alias,
        c.target,
        *(func.coalesce(func.sum(getattr(c, k)), 0) for k in _SUMMED),
    ).group_by(c.alias, c.target)
    if since is not None:
        query = query.where(c.minute >= minute_of(since))
    if alias is not None:
        query = query.where(c.alias == alias)
    return [
        TargetTraffic(a, t, int(r), int(cut), int(p), int(o), float(cost))
        for a, t, r, cut, p, o, cost in session.execute(query.order_by(c.alias, c.target))
    ]


def series(
    session: Session, *, alias: str, since: dt.datetime | None = None
) -> list[tuple[dt.datetime, str, int]]:
    """(minute, target, requests) of one alias, oldest first."""
    c = TrafficCount
    query = select(c.minute, c.target, c.requests).where(c.alias == alias).order_by(c.minute, c.target)
    if since is not None:
        query = query.where(c.minute >= minute_of(since))
    return [(m, t, int(r)) for m, t, r in session.execute(query)]


def first_minute(session: Session, *, alias: str, targets_like: str) -> dt.datetime | None:
    """The first minute any target matching ``targets_like`` (SQL LIKE) answered on ``alias``."""
    c = TrafficCount
    return session.scalar(select(func.min(c.minute)).where(c.alias == alias, c.target.like(targets_like)))


def summary(session: Session, now: dt.datetime, *, window_hours: float = 1.0) -> list[dict[str, Any]]:
    """Per alias: each target's share of the requests in the last ``window_hours`` and of all time, and
    the cost saved so far (``cost_saved``)."""
    recent = totals(session, since=now - dt.timedelta(hours=window_hours))
    ever = totals(session)
    out = []
    for alias in sorted({t.alias for t in ever}):
        mine = [t for t in ever if t.alias == alias]
        near = {t.target: t for t in recent if t.alias == alias}
        n_all = sum(t.requests for t in mine) or 1
        n_near = sum(t.requests for t in near.values()) or 1
        out.append(
            {
                "alias": alias or None,
                "window_hours": window_hours,
                "targets": [
                    {
                        "target": t.target,
                        "requests": near[t.target].requests if t.target in near else 0,
                        "share": (near[t.target].requests / n_near) if t.target in near else 0.0,
                        "requests_all_time": t.requests,
                        "share_all_time": t.requests / n_all,
                        "cost_all_time": round(t.cost, 6),
                    }
                    for t in mine
                ],
                **cost_saved(session, alias),
            }
        )
    return out


def cost_saved(session: Session, alias: str) -> dict[str, Any]:
    """What the alias's own models saved against its upstreams so far.

    The upstreams' mean cost per request on this alias, times the requests its own models (versions
    and ``base``) answered since the first upstream answer, less what those cost (``serving``'s own
    price). None while no priced upstream has answered here.
    """
    since = first_minute(session, alias=alias, targets_like="upstream:%")
    if since is None:
        return {"cost_saved": None, "teacher_cost_per_1k_requests": None, "own_requests": 0}
    rows = totals(session, since=since, alias=alias)
    up = [t for t in rows if t.target.startswith("upstream:")]
    own = [t for t in rows if not t.target.startswith("upstream:")]
    up_requests = sum(t.requests for t in up)
    per_request = sum(t.cost for t in up) / up_requests if up_requests else None
    own_requests = sum(t.requests for t in own)
    if not per_request:
        return {"cost_saved": None, "teacher_cost_per_1k_requests": None, "own_requests": own_requests}
    return {
        "cost_saved": round(own_requests * per_request - sum(t.cost for t in own), 6),
        "teacher_cost_per_1k_requests": round(1000 * per_request, 6),
        "own_requests": own_requests,
    }
