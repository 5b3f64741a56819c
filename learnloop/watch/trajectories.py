"""Trajectories for the dashboard: search with filters (keyset pages), one trajectory in full, the
filter choices. Bounded like every watch query (a page never reads a whole table row by row)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, cast, exists, func, select, text
from sqlalchemy.orm import Session

from learnloop.scoring.combine import combined_rewards
from learnloop.store.models import Score, Source, Trajectory
from learnloop.watch.queries import _iso, _val

PAGE_SIZE = 50


@dataclass
class TrajectoryFilter:
    scenario: str | None = None
    source: str | None = None
    tag: str | None = None
    reward_min: float | None = None
    reward_max: float | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    q: str | None = None
    before: str | None = None  # keyset: the id of the last row of the previous page
    problems: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, params: dict[str, str]) -> TrajectoryFilter:
        """From query parameters; a bad value is dropped and named in ``problems`` (shown on the page)."""
        f = cls()
        for key in ("scenario", "tag", "q", "before"):
            setattr(f, key, (params.get(key) or "").strip() or None)
        source = (params.get("source") or "").strip()
        if source:
            if source in {s.value for s in Source}:
                f.source = source
            else:
                f.problems.append(f"source: {source!r} is not one of {', '.join(s.value for s in Source)}")
        for key in ("reward_min", "reward_max"):
            raw = (params.get(key) or "").strip()
            if raw:
                try:
                    setattr(f, key, float(raw))
                except ValueError:
                    f.problems.append(f"{key}: {raw!r} is not a number")
        for key in ("date_from", "date_to"):
            raw = (params.get(key) or "").strip()
            if raw:
                try:
                    setattr(f, key, dt.date.fromisoformat(raw))
                except ValueError:
                    f.problems.append(f"{key}: {raw!r} is not a date (YYYY-MM-DD)")
        return f

    def query_args(self) -> dict[str, str]:
        out = {}
        for key in ("scenario", "source", "tag", "reward_min", "reward_max", "date_from", "date_to", "q"):
            v = getattr(self, key)
            if v is not None:
                out[key] = str(v)
        return out


def _tag_condition(session: Session, tag: str) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return Trajectory.tags.op("@>")(func.jsonb_build_array(tag))
    return exists(
        select(1)
        .select_from(func.json_each(Trajectory.tags).table_valued("value").alias("t"))
        .where(text("t.value = :tag"))
        .params(tag=tag)
    )


def search_trajectories(session: Session, f: TrajectoryFilter, limit: int = PAGE_SIZE) -> dict[str, Any]:
    """Newest first, ``limit`` a page (keyset on created_at, id). The reward filter uses the
    mean of the trajectory's scores."""
    reward = (
        select(func.avg(Score.value))
        .where(Score.trajectory_id == Trajectory.id)
        .correlate(Trajectory)
        .scalar_subquery()
    )
    cond = []
    if f.scenario:
        cond.append(Trajectory.scenario == f.scenario)
    if f.source:
        cond.append(Trajectory.source == Source(f.source))
    if f.tag:
        cond.append(_tag_condition(session, f.tag))
    if f.reward_min is not None:
        cond.append(reward >= f.reward_min)
    if f.reward_max is not None:
        cond.append(reward <= f.reward_max)
    if f.date_from:
        cond.append(Trajectory.created_at >= dt.datetime.combine(f.date_from, dt.time(), dt.UTC))
    if f.date_to:
        cond.append(
            Trajectory.created_at < dt.datetime.combine(f.date_to + dt.timedelta(days=1), dt.time(), dt.UTC)
        )
    if f.q:
        like = f"%{f.q}%"
        cond.append((Trajectory.id.like(f"{f.q}%")) | cast(Trajectory.messages, String).ilike(like))
    if f.before:
        # Keyset "created_at|id" of the last row shown: ids derived from content (JSONL imports) are not
        # time-ordered, so the page is ordered by time and the id only breaks ties.
        at, _, last_id = f.before.partition("|")
        try:
            when = dt.datetime.fromisoformat(at)
        except ValueError:
            f.problems.append("before: not a page cursor")
        else:
            cond.append(
                (Trajectory.created_at < when) | ((Trajectory.created_at == when) & (Trajectory.id < last_id))
            )
    q = (
        select(
            Trajectory.id,
            Trajectory.scenario,
            Trajectory.source,
            Trajectory.agent,
            Trajectory.model,
            Trajectory.model_version,
            Trajectory.tags,
            Trajectory.created_at,
            Trajectory.messages,
        )
        .where(*cond)
        .order_by(Trajectory.created_at.desc(), Trajectory.id.desc())
        .limit(limit + 1)
    )
    rows = list(session.execute(q))
    more = len(rows) > limit
    rows = rows[:limit]
    rewards = combined_rewards(session, [r.id for r in rows])
    items = []
    for r in rows:
        first_user = next((m for m in r.messages or [] if m.get("role") == "user"), None)
        items.append(
            {
                "id": r.id,
                "scenario": r.scenario,
                "source": _val(r.source),
                "agent": r.agent,
                "model": r.model_version or r.model,
                "tags": r.tags or [],
                "created_at": _iso(r.created_at),
                "reward": rewards.get(r.id),
                "turns": len(r.messages or []),
                "preview": _text(first_user)[:140] if first_user else "",
            }
        )
    cursor = f"{rows[-1].created_at.isoformat()}|{rows[-1].id}" if more and rows else None
    return {"items": items, "next_before": cursor}


def _text(message: dict[str, Any] | None) -> str:
    from learnloop.scoring.view import message_text

    return message_text(message or {})


def trajectory_detail(session: Session, trajectory_id: str) -> dict[str, Any] | None:
    t = session.get(Trajectory, trajectory_id)
    if t is None:
        return None
    scores = session.execute(
        select(Score).where(Score.trajectory_id == trajectory_id).order_by(Score.created_at, Score.id)
    ).scalars()
    from learnloop.store.models import Feedback

    feedback = session.execute(
        select(Feedback).where(Feedback.trajectory_id == trajectory_id).order_by(Feedback.id)
    ).scalars()
    reward = combined_rewards(session, [trajectory_id]).get(trajectory_id)
    return {
        "id": t.id,
        "scenario": t.scenario,
        "group": t.group_id,
        "agent": t.agent,
        "source": _val(t.source),
        "model": t.model,
        "model_version": t.model_version,
        "tags": t.tags or [],
        "split": _val(t.split),
        "metadata": t.meta or {},
        "tools": t.tools or [],
        "created_at": _iso(t.created_at),
        "reward": reward,
        "messages": [_message_view(m) for m in t.messages or []],
        "scores": [
            {
                "name": s.name,
                "value": s.value,
                "source": _val(s.source),
                "author": s.author,
                "judge_model": s.judge_model,
                "rationale": s.rationale,
                "created_at": _iso(s.created_at),
            }
            for s in scores
        ],
        "feedback": [
            {
                "rating": f.rating,
                "thumbs": f.thumbs,
                "success": f.success,
                "comment": f.comment,
                "correction": f.correction,
                "author": f.author,
                "created_at": _iso(f.created_at),
            }
            for f in feedback
        ],
    }


def _message_view(m: dict[str, Any]) -> dict[str, Any]:
    import json

    calls = []
    for c in m.get("tool_calls") or []:
        fn = c.get("function") or {}
        args = fn.get("arguments")
        try:
            args = (
                json.dumps(json.loads(args), indent=2)
                if isinstance(args, str)
                else json.dumps(args, indent=2)
            )
        except (TypeError, ValueError):
            pass
        calls.append({"id": c.get("id"), "name": fn.get("name"), "arguments": args})
    return {
        "role": m.get("role"),
        "content": _text(m),
        "name": m.get("name"),
        "tool_call_id": m.get("tool_call_id"),
        "tool_calls": calls,
    }


def filter_options(session: Session) -> dict[str, list[str]]:
    scenarios = [
        s
        for (s,) in session.execute(
            select(Trajectory.scenario)
            .where(Trajectory.scenario.is_not(None))
            .group_by(Trajectory.scenario)
            .order_by(Trajectory.scenario)
            .limit(200)
        )
    ]
    return {"scenarios": scenarios, "sources": [s.value for s in Source]}
