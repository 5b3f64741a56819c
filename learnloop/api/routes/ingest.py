"""Ingest: batches of trajectories, feedback and scores. Committed before the 2xx answer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel

from learnloop.api.deps import DbDep, SettingsDep, WriteAuth, ingest_slot
from learnloop.api.metrics import count_ingested
from learnloop.store.records import CheckedBatch, CheckedFeedback
from learnloop.store.trajectories import get_trajectory, ingest
from learnloop.windows import fill_windows

router = APIRouter(prefix="/v1", tags=["ingest"])


class IngestResponse(BaseModel):
    inserted: int
    duplicates: int
    ids: list[str]
    feedback_inserted: int
    scores_inserted: int


class ErrorResponse(BaseModel):
    error: str
    detail: str


_ERR = {"model": ErrorResponse}
# Documented in the OpenAPI schema so SDK authors see every answer a write can get.
WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {**_ERR, "description": "LEARNLOOP_API_TOKEN is set and the bearer token is missing or wrong."},
    404: {**_ERR, "description": "Feedback or scores name a trajectory that is not stored; nothing was stored."},
    413: {**_ERR, "description": "Body over server.max_request_bytes or batch over server.max_batch_size."},
    422: {**_ERR, "description": "Invalid input; `problems` names each bad field. Nothing was stored."},
    429: {**_ERR, "description": "Ingest queue full; retry the same batch after Retry-After seconds."},
    503: {**_ERR, "description": "Database unreachable or busy; retry the same batch after Retry-After seconds."},
}


@router.post(
    "/ingest", response_model=IngestResponse, responses=WRITE_RESPONSES, dependencies=[WriteAuth, Depends(ingest_slot, scope="function")]
)
def ingest_batch(batch: CheckedBatch, db: DbDep, settings: SettingsDep) -> dict[str, Any]:
    """Store a batch all-or-nothing, committed before the answer. Re-sending the same ids is a no-op
    (counted as duplicates). 422 names the bad field; 429/503 carry Retry-After."""
    size = sum(len(batch.get(kind) or ()) for kind in ("trajectories", "feedback", "scores"))
    if size > settings.server.max_batch_size:
        raise HTTPException(
            status_code=413,
            detail=f"Batch has {size} records; the most accepted in one request is {settings.server.max_batch_size} "
            "(server.max_batch_size). Split it into smaller batches; nothing was stored.",
        )
    fill_windows(batch.get("trajectories"), settings.capture.window)  # as the SDK assigns them
    with db.session() as session:
        result = ingest(
            session, batch, project=settings.project, holdout_fraction=settings.datasets.holdout_fraction
        )
    return count_ingested(result.as_dict())


@router.post(
    "/trajectories/{trajectory_id}/feedback",
    response_model=IngestResponse,
    responses=WRITE_RESPONSES,
    dependencies=[WriteAuth, Depends(ingest_slot, scope="function")],
)
def post_feedback(trajectory_id: str, feedback: CheckedFeedback, db: DbDep, settings: SettingsDep) -> dict[str, Any]:
    """Late feedback on one stored trajectory."""
    feedback["trajectory_id"] = trajectory_id
    with db.session() as session:
        result = ingest(session, {"feedback": [feedback]}, project=settings.project)
    return count_ingested(result.as_dict())


@router.get("/trajectories/{trajectory_id}")
def read_trajectory(trajectory_id: str, db: DbDep) -> dict[str, Any]:
    with db.read_session() as session:
        t = get_trajectory(session, trajectory_id)
        return {
            "id": t.id, "project": t.project, "scenario": t.scenario, "group": t.group_id, "window": t.window_id,
            "agent": t.agent, "source": t.source.value, "model": t.model, "model_version": t.model_version,
            "messages": t.messages, "tools": t.tools, "metadata": t.meta, "tags": t.tags,
            "split": t.split.value, "created_at": t.created_at.isoformat(),
        }
