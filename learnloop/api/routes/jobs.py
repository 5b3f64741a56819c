"""Jobs, loops and daemon switches over HTTP: the same functions as `learnloop jobs|loops|daemon`.

Reads need the read token when one is set, writes the write token; POST /v1/jobs reads its body after
the token check, as the ingest routes do. Every status a route answers is in the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from learnloop.api.deps import ReadAuth, RowIdPath, WriteAuth, get_db, get_settings
from learnloop.api.openapi import error_responses, request_body
from learnloop.config import Settings
from learnloop.daemon.queue import JobAction
from learnloop.store.db import Database
from learnloop.store.models import JobState
from learnloop.store.records import JsonInt, parse_json_body
from learnloop.training.config import TrainConfig

router = APIRouter(prefix="/v1", tags=["jobs"])
Db = Annotated[Database, Depends(get_db)]
Conf = Annotated[Settings, Depends(get_settings)]
Write = [WriteAuth]
Read = [ReadAuth]
_NO_JOB = error_responses(404, _404="No job with that id.")
_NO_LOOP = "No loop by that name in [[loops]]."
_BUSY = "The loop already has a cycle queued or running."


def _train_needs_loop_or_config(schema: dict[str, Any]) -> None:
    # The rule _submit enforces, said in the schema: kind train (the default) names a loop or a config.
    schema["anyOf"] = [
        {"required": ["kind"], "properties": {"kind": {"enum": ["score", "evaluate", "export"]}}},
        {"required": ["loop"], "properties": {"loop": {"type": "string", "minLength": 1}}},
        {"required": ["config"], "properties": {"config": {"type": "object"}}},
    ]


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_train_needs_loop_or_config)

    kind: Literal["train", "score", "evaluate", "export"] = "train"
    loop: str | None = Field(None, description="Queue a cycle of this [[loops]] entry (kind train).")
    config: TrainConfig | None = Field(
        None, description="A TrainConfig for a plain training run (kind train; without a loop)."
    )
    payload: dict[str, Any] = Field(
        default_factory=dict, description="Payload of other kinds (evaluate: candidate ...)."
    )
    priority: Literal["high", "normal", "low"] = "normal"
    max_attempts: JsonInt = Field(3, ge=1, le=20)
    idempotency_key: str | None = Field(None, max_length=128)


_SUBMIT = TypeAdapter(JobSubmit)


@router.get("/jobs", dependencies=Read)
def list_jobs(
    db: Db,
    state: JobState | None = None,
    loop: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[dict[str, Any]]:
    from learnloop.daemon import queue

    jobs = queue.list_jobs(db, state=state.value if state else None, loop=loop, limit=limit)
    return [j.as_dict(brief=True) for j in jobs]


@router.get("/jobs/{job_id}", dependencies=Read, responses=_NO_JOB)
def show_job(job_id: RowIdPath, db: Db) -> dict[str, Any]:
    from learnloop.daemon import queue

    return queue.get_job(db, job_id).as_dict()


@router.post(
    "/jobs",
    status_code=201,
    dependencies=Write,
    openapi_extra=request_body("JobSubmit", _SUBMIT),
    responses=error_responses(
        404,
        409,
        _404=_NO_LOOP,
        _409=_BUSY,
        _400="The body is not JSON, or the loop's settings cannot be used.",
    ),
)
async def submit_job(request: Request, db: Db, settings: Conf) -> dict[str, Any]:
    body: JobSubmit = parse_json_body(_SUBMIT, await request.body())
    return await run_in_threadpool(_submit, body, db, settings)


def _submit(body: JobSubmit, db: Database, settings: Settings) -> dict[str, Any]:
    from learnloop.daemon import loops, queue
    from learnloop.errors import ValidationFailed

    if body.loop:
        _, job = loops.check_and_submit(
            db, settings, loops.get_loop(settings, body.loop), manual=True, actor="api"
        )
        assert job is not None
        return {**job.as_dict(), "created": True}
    payload = dict(body.payload)
    if body.kind == "train":
        if not body.config:
            raise ValidationFailed(
                "A train job needs 'loop' or 'config'.", [("config", "required for kind train without loop")]
            )
        payload["config"] = body.config.model_dump(mode="json", exclude_unset=True)
    job, created = queue.submit(
        db,
        body.kind,
        payload,
        priority=body.priority,
        max_attempts=body.max_attempts,
        idempotency_key=body.idempotency_key,
    )
    return {**job.as_dict(), "created": created}


@router.post(
    "/jobs/{job_id}/{action}",
    dependencies=Write,
    responses=error_responses(
        404,
        409,
        _404="No job with that id.",
        _409="The job's state does not allow the action (e.g. already finished).",
    ),
)
def control_job(job_id: RowIdPath, action: JobAction, db: Db) -> dict[str, Any]:
    from learnloop.daemon import queue

    return queue.control(db, job_id, action, actor="api").as_dict(brief=True)


@router.get("/loops", dependencies=Read)
def loops_status(db: Db, settings: Conf) -> list[dict[str, Any]]:
    from learnloop.daemon import loops

    return loops.status(db, settings)


@router.post(
    "/loops/{name}/run",
    status_code=201,
    dependencies=Write,
    responses=error_responses(
        400,
        404,
        409,
        _400="The loop's settings cannot be used (e.g. a locked setting changed).",
        _404=_NO_LOOP,
        _409=_BUSY,
    ),
)
def run_loop(name: str, db: Db, settings: Conf) -> dict[str, Any]:
    from learnloop.daemon import loops

    _, job = loops.check_and_submit(db, settings, loops.get_loop(settings, name), manual=True, actor="api")
    assert job is not None
    return job.as_dict(brief=True)


@router.get("/daemon", dependencies=Read)
def daemon_state(db: Db) -> dict[str, Any]:
    from learnloop.daemon import queue

    return {
        "paused": queue.get_control(db, "daemon.paused"),
        "frozen": queue.get_control(db, "daemon.frozen"),
    }


@router.post("/daemon/{action}", dependencies=Write)
def daemon_switch(action: Literal["pause", "resume", "freeze", "unfreeze"], db: Db) -> dict[str, Any]:
    from learnloop.daemon import queue

    key = "daemon.paused" if action in ("pause", "resume") else "daemon.frozen"
    changed = queue.set_control(db, key, action in ("pause", "freeze"), actor="api")
    return {
        "paused": queue.get_control(db, "daemon.paused"),
        "frozen": queue.get_control(db, "daemon.frozen"),
        "changed": changed,
    }
