"""A stand-in for the daemon's worker: runs one real training job and mirrors it to its `jobs` row.

It does what the worker of the `daemon` stage does for a job it holds: per step it writes
`jobs.progress` and a `training_metrics` row; it turns `jobs.desired_state` into the training
loop's control hook (pause / resume / stop); it writes `jobs.state` when the loop obeys. The
dashboard only writes `desired_state`, so this is what makes "press pause and see it paused" real.
"""

from __future__ import annotations

import threading
from typing import Any

from learnloop.store.db import Database
from learnloop.store.events import record_event
from learnloop.store.models import DesiredState, Job, JobKind, JobState, TrainingMetric, utcnow


class TrainingWorker:
    def __init__(self, db: Database, config: Any) -> None:
        self.db, self.config = db, config
        with db.session() as s:
            job = Job(
                kind=JobKind.train,
                state=JobState.running,
                priority=50,
                loop="main",
                attempts=1,
                started_at=utcnow(),
                lease_owner="test-worker",
                payload={
                    "algorithm": config.algorithm,
                    "base_model": "tiny test model",
                    "max_steps": config.max_steps,
                },
            )
            s.add(job)
            s.flush()
            self.job_id = job.id
        self.result: Any = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._poller = threading.Thread(target=self._poll, daemon=True)

    def start(self) -> TrainingWorker:
        from learnloop.training.control import Control

        self.control = Control()
        self._thread.start()
        self._poller.start()
        return self

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        self._poller.join(timeout)

    def _poll(self) -> None:
        """Obey desired_state (the loop itself only reads its control between steps)."""
        while not self._done.wait(0.2):
            with self.db.read_session() as s:
                desired = s.get(Job, self.job_id).desired_state
            {
                DesiredState.pause: self.control.pause,
                DesiredState.run: self.control.resume,
                DesiredState.stop: self.control.stop,
            }[desired]()

    def _set(self, **values: Any) -> None:
        with self.db.session() as s:
            job = s.get(Job, self.job_id)
            for k, v in values.items():
                setattr(job, k, v)
            job.heartbeat_at = utcnow()

    def _progress(self, event: Any) -> None:
        if event.kind == "step":
            m = event.metrics
            with self.db.session() as s:
                job = s.get(Job, self.job_id)
                job.progress = {
                    "step": event.step,
                    "total_steps": event.total_steps,
                    "loss": m["loss"],
                    "tokens_per_s": m["tokens_per_s"],
                    "eta_s": m["eta_s"],
                }
                job.heartbeat_at = utcnow()
                s.add(
                    TrainingMetric(
                        job_id=self.job_id,
                        step=event.step,
                        loss=m["loss"],
                        learning_rate=m["lr"],
                        grad_norm=m["grad_norm"],
                        tokens_per_s=m["tokens_per_s"],
                    )
                )
        elif event.kind == "paused":
            self._set(state=JobState.paused)
            record_event(
                self.db, "job.paused", f"job {self.job_id} paused at step {event.step}", job_id=self.job_id
            )
        elif event.kind == "resumed":
            self._set(state=JobState.running)
            record_event(self.db, "job.resumed", f"job {self.job_id} resumed", job_id=self.job_id)

    def _run(self) -> None:
        from learnloop.training.run import train

        try:
            self.result = train(self.config, control=self.control, progress=self._progress)
            state = JobState.cancelled if self.result.stopped else JobState.succeeded
            self._set(state=state, finished_at=utcnow(), lease_owner=None)
            record_event(
                self.db,
                f"job.{'stopped' if self.result.stopped else 'succeeded'}",
                f"job {self.job_id} {state.value}",
                job_id=self.job_id,
            )
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
            self._set(state=JobState.failed, error=str(exc), finished_at=utcnow(), lease_owner=None)
        finally:
            self._done.set()
