"""Ingest: batches of trajectories, feedback and scores. Committed before the 2xx answer.

The write routes read their body themselves, after the token check (a dependency): FastAPI
would parse a declared body before any dependency runs, so a client without a token could
make the server parse 32 MiB and got a 422 instead of 401.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from learnloop.api.deps import DbDep, ReadAuth, SettingsDep, WriteAuth, ingest_slot
from learnloop.api.openapi import error_responses, request_body
from learnloop.config import Settings
from learnloop.errors import NotFound, ValidationFailed
from learnloop.jsonio import dumps
from learnloop.store.db import Database
from learnloop.store.records import BATCH, FEEDBACK, IngestBatch, parse_json_body, storable_id
from learnloop.store.trajectories import get_trajectory, ingest
from learnloop.watch import count_ingested
from learnloop.windows import fill_windows

router = APIRouter(prefix="/v1", tags=["ingest"])


class IngestResponse(BaseModel):
    inserted: int
    duplicates: int
    ids: list[str]
    feedback_inserted: int
    scores_inserted: int


# Documented in the OpenAPI schema so SDK authors see every answer a write can get.
WRITE_RESPONSES = error_responses(400, 404, 413, 422, 429, 503)


def _store(db: Database, settings: Settings, batch: IngestBatch, serving: Any = None) -> dict[str, Any]:
    try:
        return _ingest(db, settings, batch)
    except NotFound:
        named = {i.get("trajectory_id") for kind in ("feedback", "scores") for i in batch.get(kind) or ()}
        capture = getattr(serving, "capture", None)
        if capture is None:
            raise
        # Feedback on an upstream's answer the capture sampling did not keep: nothing to attach it
        # to, so it is dropped (as the SDK drops feedback on what it sampled out), not refused.
        dropped = capture.not_kept(named)
        if dropped:
            batch = {
                k: [i for i in v if i.get("trajectory_id") not in dropped]
                if k in ("feedback", "scores")
                else v
                for k, v in batch.items()
            }
            try:
                return _ingest(db, settings, batch)
            except NotFound:
                pass
        # Feedback on an answer this server just served, whose write was delayed (the database was
        # busy when the answer ended, or it was an upstream's answer, queued): wait for it a bounded
        # time, then try once more.
        if not capture.await_stored(named - dropped, settings.server.feedback_wait_seconds):
            raise
        return _ingest(db, settings, batch)


def _ingest(db: Database, settings: Settings, batch: IngestBatch) -> dict[str, Any]:
    with db.session() as session:
        result = ingest(
            session, batch, project=settings.project, holdout_fraction=settings.datasets.holdout_fraction
        )
    return count_ingested(result.as_dict())


@router.post(
    "/ingest",
    response_model=IngestResponse,
    responses=WRITE_RESPONSES,
    dependencies=[WriteAuth],
    openapi_extra=request_body("IngestBatch", BATCH),
)
async def ingest_batch(request: Request, db: DbDep, settings: SettingsDep) -> dict[str, Any]:
    """Store a batch all-or-nothing, committed before the answer. Re-sending the same ids is a no-op
    (counted as duplicates). 422 names the bad field; 429/503 carry Retry-After."""
    batch = parse_json_body(BATCH, await request.body())
    size = sum(len(batch.get(kind) or ()) for kind in ("trajectories", "feedback", "scores"))
    if size > settings.server.max_batch_size:
        raise HTTPException(
            status_code=413,
            detail=f"Batch has {size} records; the most accepted in one request is "
            f"{settings.server.max_batch_size} (server.max_batch_size). "
            "Split it into smaller batches; nothing was stored.",
        )
    fill_windows(batch.get("trajectories"), settings.capture.window)  # as the SDK assigns them
    with ingest_slot(request):
        return await run_in_threadpool(_store, db, settings, batch, _serving(request))


@router.post(
    "/trajectories/{trajectory_id}/feedback",
    response_model=IngestResponse,
    responses=WRITE_RESPONSES,
    dependencies=[WriteAuth],
    openapi_extra=request_body("FeedbackIn", FEEDBACK),
)
async def post_feedback(
    trajectory_id: str, request: Request, db: DbDep, settings: SettingsDep
) -> dict[str, Any]:
    """Late feedback on one stored trajectory (at least one signal)."""
    problem = storable_id(trajectory_id)
    if problem:
        raise ValidationFailed(
            f"Invalid input — trajectory_id (in the path): {problem}. Nothing was stored.",
            [("trajectory_id", problem)],
        )
    feedback = parse_json_body(FEEDBACK, await request.body())
    feedback["trajectory_id"] = trajectory_id
    with ingest_slot(request):
        return await run_in_threadpool(_store, db, settings, {"feedback": [feedback]}, _serving(request))


def _serving(request: Request) -> Any:
    """This server's serving runtime, when it serves answers (feedback may name one just served)."""
    return getattr(request.app.state, "serving", None)


@router.get(
    "/trajectories/{trajectory_id}",
    dependencies=[ReadAuth],
    responses=error_responses(404, 503),
    response_model=dict[str, Any],
)
def read_trajectory(trajectory_id: str, db: DbDep) -> Response:
    """One stored trajectory."""
    if storable_id(trajectory_id):  # no stored id holds NUL or is that long: no need to ask the database
        raise NotFound(f"No trajectory with id {trajectory_id[:80]!r}.")
    with db.read_session() as session:
        t = get_trajectory(session, trajectory_id)
        # Encoded here, not by FastAPI: a row stored before the nesting limit may nest deeper than
        # its encoder goes, and must stay readable.
        return _json(
            {
                "id": t.id,
                "project": t.project,
                "scenario": t.scenario,
                "group": t.group_id,
                "window": t.window_id,
                "agent": t.agent,
                "source": t.source.value,
                "model": t.model,
                "model_version": t.model_version,
                "messages": t.messages,
                "tools": t.tools,
                "metadata": t.meta,
                "tags": t.tags,
                "split": t.split.value,
                "created_at": t.created_at.isoformat(),
            }
        )


def _json(data: dict[str, Any]) -> Response:
    return Response(dumps(data), media_type="application/json")
