"""What the dashboard's live streams send: each feed is polled and returns the frames that are new
since its last poll, as ``(event, data, id)``; the HTTP layer writes them as server-sent events.

``id`` is what a reconnecting browser sends back as ``Last-Event-ID``: the job feed's is the last
training step sent, the event feed's the last event id, so a reconnect resumes where it was.
"""

from __future__ import annotations

from typing import Any

from learnloop.ids import ROW_ID_MAX
from learnloop.store.db import Database
from learnloop.watch import queries
from learnloop.watch.format import job_stage

Frame = tuple[str, Any, int | None]

# The job fields the job stream sends with every poll.
JOB_FIELDS = ("id", "state", "desired_state", "step", "total_steps", "loss", "tokens_per_s", "eta_s", "error")


def resume_point(last_event_id: str | None, after: int | None) -> int | None:
    """Where a stream starts: after the ``Last-Event-ID`` a reconnecting browser sent, else ``after``."""
    last = (last_event_id or "").strip()
    # Only ids we could have sent: a bigger number (or none at all) is ignored, never sent to a query.
    if last.lstrip("-").isascii() and last.lstrip("-").isdigit() and abs(int(last)) <= ROW_ID_MAX:
        return int(last)
    return after


def metric_points(db: Database, job_id: int, max_points: int, after_step: int | None) -> dict[str, Any]:
    """A job's loss, learning rate and tokens/s by step, in at most ``max_points`` points (the raw
    points after ``after_step`` when given)."""
    with db.read_session() as s:
        return queries.metric_series(s, job_id, max_points=max_points, after_step=after_step)


class JobFeed:
    """A job's new training metric points (raw, after the last step sent) and its state."""

    def __init__(self, db: Database, job_id: int, after_step: int | None) -> None:
        self.db, self.job_id, self.last = db, job_id, after_step

    def poll(self) -> list[Frame]:
        with self.db.read_session() as s:
            job = queries.get_job(s, self.job_id)
            # The page drew the downsampled history; from here on the points go out one by one.
            new = queries.metric_series(
                s, self.job_id, max_points=1000, after_step=self.last if self.last is not None else -1
            )
        if job is None:
            return [("gone", {"job_id": self.job_id}, None)]
        frames: list[Frame] = []
        if new["points"]:
            self.last = new["points"][-1]["step"]
            frames.append(("metrics", {"points": new["points"], "bucket": new["bucket"]}, self.last))
        # The stage in words, as the page shows it ("evaluating 3/8"), not the key.
        frames.append(
            (
                "job",
                {**{k: job[k] for k in JOB_FIELDS}, "stage": job_stage(job) if job.get("stage") else None},
                None,
            )
        )
        return frames


class EventFeed:
    """The event log, oldest first after the last event sent (the newest 100 on the first poll)."""

    def __init__(self, db: Database, after: int | None) -> None:
        self.db, self.last = db, after

    def poll(self) -> list[Frame]:
        with self.db.read_session() as s:
            events = queries.events_after(s, self.last, limit=100)
        frames: list[Frame] = [("event", e, e["id"]) for e in events]
        self.last = events[-1]["id"] if events else (self.last if self.last is not None else 0)
        return frames
