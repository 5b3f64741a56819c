"""Capture windows as the original RL system listed them:
what each holds and whether it is ready to train on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from learnloop.datasets.filters import DatasetFilters, stream_rows
from learnloop.store.models import Score, Split, Trajectory


@dataclass
class WindowSummary:
    window: str | None  # None: trajectories recorded without a window (imported, or before windows existed)
    trajectories: int = 0
    agents: int = 0
    scored: int = 0
    first: str | None = None
    last: str | None = None
    ready: bool = False
    reasons: list[str] = field(default_factory=list)  # why it is not ready

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_windows(
    session: Session,
    filters: DatasetFilters | None = None,
    *,
    min_scored: int = 1,
    min_agents: int | None = None,
    chunk_size: int = 1000,
) -> list[WindowSummary]:
    """Training-split windows matching ``filters``, newest first, with trajectory, agent and scored counts.

    A window is ready when it has at least ``min_scored`` scored trajectories and (with ``min_agents``,
    or the filters' ``min_agents``) at least that many distinct agents. ``filters.window_id`` and
    ``filters.min_agents`` do not hide windows here: they are what is being listed and judged.
    """
    f = (filters or DatasetFilters()).model_copy(update={"window_id": None, "min_agents": None})
    need_agents = min_agents if min_agents is not None else (filters.min_agents if filters else None)
    acc: dict[str | None, tuple[WindowSummary, set[str]]] = {}
    columns = (Trajectory.id, Trajectory.window_id, Trajectory.agent, Trajectory.tags, Trajectory.created_at)
    for chunk in stream_rows(session, f, Split.train, chunk_size=chunk_size, columns=columns):
        ids = [r.id for r in chunk]
        scored = set(
            session.scalars(select(Score.trajectory_id).where(Score.trajectory_id.in_(ids)).distinct())
        )
        for r in chunk:
            summary, agents = acc.setdefault(r.window_id, (WindowSummary(r.window_id), set()))
            summary.trajectories += 1
            summary.scored += r.id in scored
            if r.agent is not None:
                agents.add(r.agent)
            stamp = r.created_at.isoformat()
            summary.first = min(summary.first or stamp, stamp)
            summary.last = max(summary.last or stamp, stamp)
    out = []
    for summary, agents in acc.values():
        summary.agents = len(agents)
        if summary.scored < min_scored:
            summary.reasons.append(f"{summary.scored} scored (needs {min_scored})")
        if need_agents is not None and summary.agents < need_agents:
            summary.reasons.append(f"{summary.agents} agents (needs {need_agents})")
        summary.ready = not summary.reasons
        out.append(summary)
    # Newest first; the window-less bucket last.
    out.sort(key=lambda w: (w.window is not None, w.window or ""), reverse=True)
    return out
