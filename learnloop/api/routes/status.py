"""Status for people and orchestrators: /v1/status, /readyz, /metrics."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from learnloop.api.deps import DbDep, ReadAuth, SettingsDep
from learnloop.watch import build_status, readiness, render_metrics

log = logging.getLogger("learnloop.api")
router = APIRouter(tags=["status"])


@router.get("/v1/status", dependencies=[ReadAuth])
def get_status(db: DbDep, settings: SettingsDep) -> dict[str, Any]:
    """The whole loop at a glance: loops, queue, running job, serving, last evaluation,
    trajectories, host health."""
    return build_status(db, settings, self_role="server")


class Readiness(BaseModel):
    ready: bool
    reasons: list[str]
    database: dict[str, Any]
    disk: dict[str, Any]


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready; `reasons` says why."}},
)
def readyz(db: DbDep, settings: SettingsDep) -> JSONResponse:
    """200 when the database answers, its schema is at head and the data dir's disk is above
    the floor; else 503 with reasons."""
    ok, reasons, checks = readiness(db, settings.data_dir, disk_floor_gb=settings.watch.disk_floor_gb)
    # Open to anyone (orchestrators probe it without a token): what is down, not where. The
    # driver's message names hosts and ports; it goes to the log.
    for r in reasons:
        if r.startswith("database unreachable"):
            log.warning("readyz: %s", r)
    reasons = ["database unreachable" if r.startswith("database unreachable") else r for r in reasons]
    body = {
        "ready": ok,
        "reasons": reasons,
        "database": {
            k: checks["database"].get(k) for k in ("reachable", "latency_ms", "revision", "at_head")
        },
        "disk": {k: checks["disk"][k] for k in ("free_bytes", "floor_bytes", "ok")},
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response)
async def prometheus_metrics(db: DbDep, settings: SettingsDep) -> Response:
    """Prometheus text exposition: process counters plus gauges read from the database."""
    body = await run_in_threadpool(render_metrics, db, settings.watch.metrics_window_hours)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
