"""The daemon process: checks loops, takes jobs, supervises them, scores in the background, recovers.

One job at a time per daemon (training jobs are heavy); run more daemons against one PostgreSQL
database to run more at once. The main thread sleeps on an Event between due times (loop checks,
the next look for a job, the reaper), so an idle daemon does a few queries every ``poll_interval``
seconds and nothing in between.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from learnloop.config import Settings
from learnloop.daemon import loops as loops_mod
from learnloop.daemon import queue
from learnloop.daemon.cycle import Context, run_job
from learnloop.daemon.log import configure_log, emit
from learnloop.paths import data_dir
from learnloop.store.db import Database
from learnloop.store.models import Job, JobState, utcnow

log = logging.getLogger("learnloop.daemon")


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Daemon:
    def __init__(
        self, settings: Settings, db: Database, *, owner: str | None = None, scoring: bool = True
    ) -> None:
        self.settings, self.db = settings, db
        self.cfg = settings.daemon
        self.owner = owner or default_owner()
        self.scoring = scoring
        self._stop = threading.Event()  # the daemon is shutting down
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None
        self._scorer: threading.Thread | None = None
        self._thread: threading.Thread | None = None
        self.ctx = Context(db=db, settings=settings, owner=self.owner, shutdown=self._stop)

    # -- lifecycle ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Checks before any work: the config locks of every loop (a changed locked key refuses the start)
        and the custom triggers and readiness checks the loops name."""
        configure_log(data_dir(self.settings.data_dir).logs, self.cfg.log_retention_days)
        loops_mod.check_locks(self.db, self.settings)
        loops_mod.check_registered(self.settings)

    def run(self, *, install_signals: bool = True) -> None:
        """Run in the foreground until ``stop()`` or SIGTERM/SIGINT (a running training checkpoints first)."""
        self.prepare()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        emit(
            self.db,
            "daemon.started",
            f"daemon {self.owner} started ({len(self.settings.loops)} loop(s))",
            data={"owner": self.owner, "loops": [lp.name for lp in self.settings.loops]},
        )
        if self.scoring:
            self._scorer = threading.Thread(target=self._score_forever, name="learnloop-scoring", daemon=True)
            self._scorer.start()
        try:
            self._main()
        finally:
            self._stop.set()
            if self._worker is not None:
                self._worker.join()
            emit(self.db, "daemon.stopped", f"daemon {self.owner} stopped", data={"owner": self.owner})

    def start(self) -> threading.Thread:
        """Run in a background thread (what `learnloop serve` does); ``stop()`` ends it."""
        self.prepare()
        self._thread = threading.Thread(
            target=self.run, kwargs={"install_signals": False}, name="learnloop-daemon", daemon=True
        )
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def busy(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    # -- the main loop ------------------------------------------------------------------------
    def _main(self) -> None:
        next_reap = next_canary = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_reap:
                    self._reap()
                    next_reap = now + max(1.0, min(self.cfg.lease_seconds / 2, self.cfg.poll_interval * 5))
                if now >= next_canary:
                    next_canary = now + max(1.0, self.cfg.poll_interval)
                    self._canaries()
                # Take work first: a loop check may be slow (it runs the dataset builder dry).
                if (
                    not self.busy
                    and not self._stop.is_set()
                    and not queue.get_control(self.db, "daemon.paused")
                ):
                    job = queue.claim(self.db, self.owner, lease_seconds=self.cfg.lease_seconds)
                    if job is not None:
                        self._worker = threading.Thread(
                            target=run_job, args=(self.ctx, job), name=f"learnloop-job-{job.id}"
                        )
                        self._worker.start()
                for loop in loops_mod.due(self.db, self.settings):
                    if self._stop.is_set():
                        break
                    try:
                        loops_mod.check_and_submit(self.db, self.settings, loop)
                    except Exception as exc:  # noqa: BLE001 - one loop's bad check must not stop the others
                        emit(
                            self.db,
                            "trigger.error",
                            f"loop {loop.name}: check failed: {exc}",
                            level="error",
                            loop=loop.name,
                        )
                        log.exception("loop %s check failed", loop.name)
                        self._postpone(loop)
                if not self.busy and queue.list_jobs(self.db, state="queued", limit=1):
                    continue  # a check may just have queued a cycle: take it without sleeping
            except Exception:  # noqa: BLE001 - a lost database connection: wait and try again
                log.exception("daemon tick failed; retrying in %s s", self.cfg.poll_interval)
            self._wake.wait(self._sleep_for())
            self._wake.clear()

    def _canaries(self) -> None:
        """Move each running canary a step on, back to its teacher, or to the end (daemon/canary.py)."""
        from learnloop.daemon import canary

        try:
            canary.tick(self.db, self.settings)
        except Exception as exc:  # noqa: BLE001 - a failed check is retried next tick; say why now
            emit(self.db, "canary.error", f"canary check failed: {exc}", level="error")
            log.exception("canary check failed")

    def _sleep_for(self) -> float:
        wait = self.cfg.poll_interval
        try:
            due = loops_mod.next_due_in(self.db, self.settings)
        except Exception:  # noqa: BLE001
            due = None
        if due is not None:
            wait = min(wait, max(0.05, due))
        return wait

    def _postpone(self, loop: Any) -> None:
        from learnloop.store.models import LoopState

        with self.db.session() as s:
            row = s.get(LoopState, loop.name)
            if row is not None:
                row.next_check_at = utcnow() + dt.timedelta(seconds=loop.triggers.check_interval)

    def _reap(self) -> None:
        dead = self._dead_local_owners()
        if dead:
            # A daemon on this host that no longer exists (kill -9, reboot): no need to wait out its lease.
            with self.db.session() as s:
                for row in s.query(Job).filter(
                    Job.lease_owner.in_(dead), Job.state.in_([JobState.running, JobState.paused])
                ):
                    row.lease_expires_at = utcnow() - dt.timedelta(seconds=1)
        queue.reap(self.db, stall_seconds=max(self.cfg.stall_timeout, self.cfg.lease_seconds))

    def _dead_local_owners(self) -> list[str]:
        host = socket.gethostname()
        with self.db.read_session() as s:
            owners = {
                o for (o,) in s.query(Job.lease_owner).filter(Job.lease_owner.like(f"{host}:%")).distinct()
            }
        dead = []
        for owner in owners:
            try:
                pid = int(owner.rsplit(":", 1)[1])
            except ValueError:
                continue
            if pid != os.getpid() and not _alive(pid):
                dead.append(owner)
        return dead

    # -- background scoring ----------------------------------------------------------------------
    def _score_forever(self) -> None:
        wait = 0.0
        while not self._stop.wait(wait):
            wait = self.cfg.score_interval
            try:
                self.score_once()
            except Exception as exc:  # noqa: BLE001 - keep scoring later; say why now
                emit(self.db, "scoring.failed", f"background scoring failed: {exc}", level="error")

    def score_once(self) -> dict[str, Any]:
        from learnloop.scoring import apply_rewards

        report = apply_rewards(self.db, self.settings.scoring).as_dict()
        scored = report["heuristics"]["scored"]
        fb = report["feedback"]
        judged = 0
        if self.cfg.judge and self.settings.scoring.judge_base_url:
            from learnloop.scoring import judge_scenario

            for scen in {lp.scenario for lp in self.settings.loops if lp.scenario}:
                try:
                    judged += judge_scenario(self.db, scen, self.settings.scoring).scores_stored
                except Exception as exc:  # noqa: BLE001
                    emit(self.db, "scoring.failed", f"judge on scenario {scen}: {exc}", level="warning")
        stored = fb["scored"]
        if scored or judged or stored:
            emit(
                self.db,
                "scoring.applied",
                f"scored {scored} heuristic, {stored} feedback, {judged} judge score(s)",
                data={"heuristic": scored, "feedback": stored, "judge": judged},
            )
        return report


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) is dead for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
