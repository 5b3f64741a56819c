from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from learnloop import __version__
from learnloop.api.deps import DbDep, ReadAuth
from learnloop.api.openapi import ErrorResponse, error_responses
from learnloop.errors import ValidationFailed
from learnloop.store.db import current_revision
from learnloop.store.records import storable_id
from learnloop.store.trajectories import stats

log = logging.getLogger("learnloop.api")
router = APIRouter(tags=["status"])

# Seconds a client is told to wait when the database is down.
HEALTH_RETRY_AFTER = 5


@router.get("/healthz", responses=error_responses(503))
def healthz(db: DbDep, request: Request) -> Any:
    """200 when the database answers; 503 with Retry-After when it does not.

    Open to anyone (load balancers call it without a token), so it says what is down, never
    where: no database URL, host, path or driver message (those go to the server's log).
    """
    try:
        with db.read_session() as s:
            s.execute(text("select 1"))
            schema = current_revision(db.engine)
    except Exception as exc:  # any failure to answer is "down"; the reason is for the operator's log
        log.warning("healthz: database unavailable: %s", exc)
        return JSONResponse(
            ErrorResponse(
                error="The database is unavailable.", detail="The database is unavailable."
            ).model_dump(exclude_none=True)
            | {"status": "unavailable", "database": "unavailable"},
            status_code=503,
            headers={"Retry-After": str(HEALTH_RETRY_AFTER)},
        )
    watcher = request.app.state.inbox
    return {
        "status": "ok",
        "version": __version__,
        "database": "ok",
        "schema": schema,
        "inbox": {"watching": watcher is not None and watcher.running},
    }


@router.get("/v1/stats", dependencies=[ReadAuth], responses=error_responses(503))
def get_stats(db: DbDep, agent: str | None = None) -> dict[str, Any]:
    """Trajectory counts by source, scenario, split and day (``agent``: one agent's only)."""
    problem = storable_id(agent, 128) if agent is not None else None
    if problem:  # PostgreSQL cannot even compare with such text: a clear 422, the same on SQLite
        raise ValidationFailed(f"Invalid input — agent: {problem}.", [("agent", problem)])
    with db.read_session() as s:
        return stats(s, agent=agent)
