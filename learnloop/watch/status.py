"""The status of the whole loop in one dict: what `GET /v1/status`,
`learnloop status` and the dashboard show."""

from __future__ import annotations

from typing import Any

from learnloop.config import Settings
from learnloop.daemon.canary import status as canary_status
from learnloop.store.db import Database
from learnloop.store.models import utcnow
from learnloop.store.traffic import summary as traffic_summary
from learnloop.watch import queries
from learnloop.watch.host import host_health


def build_status(db: Database, settings: Settings, *, self_role: str | None = None) -> dict[str, Any]:
    """Loops, queue, running jobs, serving, last evaluation, trajectory counts, host health, each
    alias's traffic share per target with the cost saved against its upstreams, and running canaries.

    Host health is measured even when the database is down (then ``database.reachable`` is false
    and the database sections are absent), so the status itself says what is wrong.
    """
    now = utcnow()
    host = host_health(db, settings.data_dir, disk_floor_gb=settings.watch.disk_floor_gb, self_role=self_role)
    status: dict[str, Any] = {"generated_at": now.isoformat(), "host": host}
    if not host["database"]["reachable"]:
        return status
    with db.read_session() as s:
        active = queries.active_jobs(s)
        status.update(
            loops=queries.loops(s, now),
            control=queries.control_switches(s),
            queue=queries.queue_summary(s),
            running=active,
            running_job=next((j for j in active if j["state"] == "running"), active[0] if active else None),
            serving=queries.serving(s),
            last_evaluation=queries.last_evaluation(s),
            trajectories=queries.trajectory_counts(s, now),
            traffic=traffic_summary(s, now),
        )
    status["canaries"] = canary_status(db, settings)
    return status
