from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import text

from learnloop import __version__
from learnloop.api.deps import DbDep
from learnloop.store.db import current_revision
from learnloop.store.trajectories import stats

router = APIRouter(tags=["status"])


@router.get("/healthz")
def healthz(db: DbDep, request: Request) -> dict[str, Any]:
    """200 when the database answers (503 with Retry-After when it does not)."""
    with db.read_session() as s:
        s.execute(text("select 1"))
    watcher = request.app.state.inbox
    return {
        "status": "ok",
        "version": __version__,
        "database": db.dialect,
        "schema": current_revision(db.engine),
        "inbox": {"watching": watcher is not None and watcher.running, "path": str(watcher.dirs.inbox) if watcher else None},
    }


@router.get("/v1/stats")
def get_stats(db: DbDep, agent: str | None = None) -> dict[str, Any]:
    with db.read_session() as s:
        return stats(s, agent=agent)
