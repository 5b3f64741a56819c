"""Jobs, loops and daemon switches over HTTP: the same functions as `learnloop jobs|loops|daemon`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from learnloop.api.deps import get_db, get_settings, require_write_token
from learnloop.config import Settings
from learnloop.store.db import Database

router = APIRouter(prefix="/v1", tags=["jobs"])
Db = Annotated[Database, Depends(get_db)]
Conf = Annotated[Settings, Depends(get_settings)]
Write = [Depends(require_write_token)]


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["train", "score", "evaluate", "export"] = "train"
    loop: str | None = Field(None, description="Queue a cycle of this [[loops]] entry (kind train).")
    config: dict[str, Any] | None = Field(None, description="A TrainConfig for a plain training run (kind train).")
    payload: dict[str, Any] = Field(default_factory=dict, description="Payload of other kinds (evaluate: candidate ...).")
    priority: Literal["high", "normal", "low"] = "normal"
    max_attempts: int = Field(3, ge=1, le=20)
    idempotency_key: str | None = Field(None, max_length=128)


@router.get("/jobs")
def list_jobs(db: Db, state: str | None = None, loop: str | None = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
    from learnloop.daemon import queue

    return [j.as_dict(brief=True) for j in queue.list_jobs(db, state=state, loop=loop, limit=limit)]


@router.get("/jobs/{job_id}")
def show_job(job_id: int, db: Db) -> dict[str, Any]:
    from learnloop.daemon import queue

    return queue.get_job(db, job_id).as_dict()


@router.post("/jobs", status_code=201, dependencies=Write)
def submit_job(body: JobSubmit, db: Db, settings: Conf) -> dict[str, Any]:
    from learnloop.daemon import loops, queue
    from learnloop.errors import ValidationFailed

    if body.loop:
        _, job = loops.check_and_submit(db, settings, loops.get_loop(settings, body.loop), manual=True, actor="api")
        assert job is not None
        return {**job.as_dict(), "created": True}
    payload = dict(body.payload)
    if body.kind == "train":
        if not body.config:
            raise ValidationFailed("A train job needs 'loop' or 'config'.", [("config", "required for kind train without loop")])
        from learnloop.daemon.cycle import validate_config

        validate_config(body.config, "config")
        payload["config"] = body.config
    job, created = queue.submit(db, body.kind, payload, priority=body.priority, max_attempts=body.max_attempts,
                                idempotency_key=body.idempotency_key)
    return {**job.as_dict(), "created": created}


@router.post("/jobs/{job_id}/{action}", dependencies=Write)
def control_job(job_id: int, action: Literal["pause", "resume", "stop", "skip", "cancel", "retry"], db: Db) -> dict[str, Any]:
    from learnloop.daemon import queue

    return queue.control(db, job_id, action, actor="api").as_dict(brief=True)


@router.get("/loops")
def loops_status(db: Db, settings: Conf) -> list[dict[str, Any]]:
    from learnloop.daemon import loops

    return loops.status(db, settings)


@router.post("/loops/{name}/run", status_code=201, dependencies=Write)
def run_loop(name: str, db: Db, settings: Conf) -> dict[str, Any]:
    from learnloop.daemon import loops

    _, job = loops.check_and_submit(db, settings, loops.get_loop(settings, name), manual=True, actor="api")
    assert job is not None
    return job.as_dict(brief=True)


@router.get("/daemon")
def daemon_state(db: Db) -> dict[str, Any]:
    from learnloop.daemon import queue

    return {"paused": queue.get_control(db, "daemon.paused"), "frozen": queue.get_control(db, "daemon.frozen")}


@router.post("/daemon/{action}", dependencies=Write)
def daemon_switch(action: Literal["pause", "resume", "freeze", "unfreeze"], db: Db) -> dict[str, Any]:
    from learnloop.daemon import queue

    key = "daemon.paused" if action in ("pause", "resume") else "daemon.frozen"
    changed = queue.set_control(db, key, action in ("pause", "freeze"), actor="api")
    return {"paused": queue.get_control(db, "daemon.paused"), "frozen": queue.get_control(db, "daemon.frozen"), "changed": changed}
