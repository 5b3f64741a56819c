"""Training as a supervised subprocess: progress into the database, the job row's control into the run.

The child is ``python -m learnloop.training.run --config <output_dir>/job-config.json`` (or the
configured launcher, e.g. ``accelerate launch``). It prints one JSON line per progress event; each
``step`` becomes a ``training_metrics`` row and the job's ``progress``. The job row's desired state
is written to the run's control file (``pause``/``resume``/``stop``), which the training loop reads
before every optimizer step, so a pause or stop takes effect within one step of reaching the file
(the supervisor looks at the row every ``CONTROL_POLL`` seconds).

The child runs in its own process group (so a kill reaches ``accelerate``'s workers too) and,
on Linux, is sent SIGKILL by the kernel when the thread that started it dies, so a daemon killed
with ``kill -9`` leaves no training process behind.
"""

from __future__ import annotations

import collections
import json
import os
import queue as queue_mod
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete

from learnloop.children import signalled_when_parent_dies
from learnloop.daemon import queue
from learnloop.daemon.log import emit, write_line
from learnloop.store.db import Database
from learnloop.store.models import DesiredState, JobState, TrainingMetric
from learnloop.training.control import write_control

CONTROL_POLL = 0.25
CONFIG_FILE = "job-config.json"
_COMMAND_OF = {
    DesiredState.run: "resume",
    DesiredState.pause: "pause",
    DesiredState.stop: "stop",
    DesiredState.skip: "stop",
    DesiredState.cancel: "stop",
}


@dataclass
class Outcome:
    """How a supervised run ended: done | stopped | failed | stalled | lost (our lease was taken) |
    no_signal (a rollout run found nothing to learn from: retrying the same data would find nothing)."""

    kind: str
    step: int = 0
    total_steps: int = 0
    adapter_dir: str | None = None
    checkpoint: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    output_tail: str = ""


def _read_lines(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a kill
    return out


def progress_line(step: int, total: int, metrics: dict[str, Any]) -> str:
    """``step 8/80 (10%), loss 1.234, 1520 tokens/s, ETA 1m12s``: what a person watching a run wants."""
    parts = [f"step {step}/{total} ({step * 100 // max(total, 1)}%)"]
    loss = metrics.get("loss")
    if isinstance(loss, (int, float)):
        parts.append(f"loss {loss:.4g}")
    tps = metrics.get("tokens_per_s")
    if isinstance(tps, (int, float)):
        parts.append(f"{tps:,.0f} tokens/s")
    eta = metrics.get("eta_s")
    if isinstance(eta, (int, float)) and step < total:
        parts.append(f"ETA {duration(eta)}")
    return ", ".join(parts)


def duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def training_command(config_path: Path, launcher: list[str]) -> list[str]:
    return [*(launcher or [sys.executable]), "-m", "learnloop.training.run", "--config", str(config_path)]


class Supervisor:
    """Runs one training subprocess for one claimed job, holding its lease until it ends."""

    def __init__(
        self,
        db: Database,
        job_id: int,
        owner: str,
        settings: Any,
        *,
        shutdown: threading.Event,
        loop: str | None = None,
    ) -> None:
        self.db, self.job_id, self.owner, self.loop = db, job_id, owner, loop
        self.cfg = settings.daemon
        self.shutdown = shutdown
        self.tail: collections.deque[str] = collections.deque(maxlen=self.cfg.output_tail_lines)
        self.progress: dict[str, Any] = {}
        self._told = -1
        self._pending: list[dict[str, Any]] = []

    def run(self, config: Any) -> Outcome:
        out = self.out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        cfg_path = out / CONFIG_FILE
        tmp = out / f".{CONFIG_FILE}.tmp"
        tmp.write_text(config.model_dump_json(indent=2))
        os.replace(tmp, cfg_path)
        info = queue.heartbeat(self.db, self.job_id, self.owner, lease_seconds=self.cfg.lease_seconds)
        if info is None:
            return Outcome("lost")
        desired = DesiredState(info.desired_state)
        # Keep showing where it was (a resumed run says "start" only after loading the model).
        self.progress = {
            k: v for k, v in (info.progress or {}).items() if k in ("step", "total_steps", "checkpoint")
        }
        self.progress["stage"] = "training"
        self._told = -1  # the last tenth of the run the log reported
        # A command left by an earlier attempt (a stop it obeyed, a pause) must not steer this one.
        sent = "pause" if desired == DesiredState.pause else "resume"
        write_control(out, sent)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.cfg.training_threads:
            # torch sizes its intra-op pool from these at import: the child must get them, not set them.
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.cfg.training_threads)
        proc = subprocess.Popen(
            training_command(cfg_path, self.cfg.launcher),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=env,
            start_new_session=True,
            preexec_fn=signalled_when_parent_dies(signal.SIGKILL),
        )
        lines: queue_mod.Queue[str | None] = queue_mod.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=pump, name=f"job-{self.job_id}-output", daemon=True)
        reader.start()
        state = JobState.paused if desired == DesiredState.pause else JobState.running
        last_move = time.monotonic()
        last_poll = 0.0
        final: dict[str, Any] | None = None
        try:
            while True:
                try:
                    line = lines.get(timeout=CONTROL_POLL)
                except queue_mod.Empty:
                    line = ""
                if line is None:
                    break
                if line:
                    ev = self._parse(line)
                    if ev is not None:
                        kind = ev.get("kind")
                        if kind in ("step", "start", "resumed"):
                            last_move = time.monotonic()
                        if kind == "start":
                            self._on_start(ev)
                        elif kind == "step":
                            self._on_step(ev)
                        elif kind == "checkpoint":
                            self.progress["checkpoint"] = ev.get("path")
                        elif kind == "paused":
                            state = JobState.paused
                            emit(
                                self.db,
                                "job.paused",
                                f"job {self.job_id} paused at step {ev['step']}",
                                loop=self.loop,
                                job_id=self.job_id,
                            )
                        elif kind == "resumed":
                            state = JobState.running
                            emit(
                                self.db,
                                "job.resumed",
                                f"job {self.job_id} resumed at step {ev['step']}",
                                loop=self.loop,
                                job_id=self.job_id,
                            )
                        elif kind in ("done", "stopped", "no_signal"):
                            final = ev
                    if not lines.empty():
                        continue  # drain bursts of fast steps before touching the database
                now = time.monotonic()
                if now - last_poll < CONTROL_POLL:
                    continue
                last_poll = now
                self._flush_metrics()
                info = queue.heartbeat(
                    self.db,
                    self.job_id,
                    self.owner,
                    lease_seconds=self.cfg.lease_seconds,
                    progress=self.progress,
                    state=state,
                    checkpoint_path=self.progress.get("checkpoint"),
                )
                if info is None:
                    emit(
                        self.db,
                        "job.lost",
                        f"job {self.job_id}: lease taken by another daemon; stopping this run",
                        level="warning",
                        loop=self.loop,
                        job_id=self.job_id,
                    )
                    self._kill(proc)
                    return Outcome("lost")
                desired = DesiredState(info.desired_state)
                want = "stop" if self.shutdown.is_set() else _COMMAND_OF[desired]
                if want != sent:
                    write_control(out, want)  # type: ignore[arg-type]
                    sent = want
                if state == JobState.paused:
                    last_move = now
                elif now - last_move > self.cfg.stall_timeout:
                    emit(
                        self.db,
                        "job.stalled",
                        f"job {self.job_id}: no training step for {now - last_move:.0f} s "
                        f"(stall_timeout {self.cfg.stall_timeout:.0f} s); killing it to retry",
                        level="warning",
                        loop=self.loop,
                        job_id=self.job_id,
                        data={"step": self.progress.get("step")},
                    )
                    self._kill(proc)
                    return Outcome(
                        "stalled",
                        step=int(self.progress.get("step", 0)),
                        error=f"stalled: no progress for {self.cfg.stall_timeout:.0f} s",
                        output_tail=self._tail(),
                    )
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                self._kill(proc)
            reader.join(timeout=5)
        self._flush_metrics()
        step = int(self.progress.get("step", 0))
        total = int(self.progress.get("total_steps", 0))
        if rc == 0 and final is not None and final.get("kind") == "done":
            return Outcome(
                "done",
                step,
                total,
                adapter_dir=final.get("path"),
                metrics=final.get("metrics") or {},
                checkpoint=self.progress.get("checkpoint"),
            )
        if rc == 0 and final is not None:
            return Outcome("stopped", step, total, checkpoint=final.get("path"))
        if final is not None and final.get("kind") == "no_signal":
            return Outcome(
                "no_signal",
                step,
                total,
                metrics=final.get("metrics") or {},
                error=str(final.get("message") or "no learning signal"),
                output_tail=self._tail(),
            )
        why = (
            f"killed by signal {-rc}" + (" (SIGKILL: out of memory?)" if rc == -signal.SIGKILL else "")
            if rc < 0
            else f"exit code {rc}"
        )
        last = next((ln for ln in reversed(self.tail) if ln.strip()), "")
        return Outcome(
            "failed", step, total, error=f"training process {why}: {last}".strip(), output_tail=self._tail()
        )

    # -- progress ---------------------------------------------------------------------------------
    def _parse(self, line: str) -> dict[str, Any] | None:
        text = line.rstrip("\n")
        if text.startswith("{"):
            try:
                ev = json.loads(text)
                if isinstance(ev, dict) and "kind" in ev and "step" in ev:
                    return ev
            except json.JSONDecodeError:
                pass
        self.tail.append(text)
        return None

    def _on_start(self, ev: dict[str, Any]) -> None:
        step = int(ev.get("step", 0))
        total = int(ev.get("total_steps", 0))
        self._told = step * 10 // total if total else -1  # a resumed run reports from where it resumed
        self.progress.update(step=step, total_steps=int(ev.get("total_steps", 0)))
        self.tail.append(ev.get("message", ""))
        # Steps past the checkpoint it resumed from are redone: their earlier rows describe nothing kept.
        with self.db.session() as s:
            s.execute(
                delete(TrainingMetric).where(TrainingMetric.job_id == self.job_id, TrainingMetric.step > step)
            )
        # Steps up to it whose rows a killed daemon never wrote are in the run's own metrics file
        # (trimmed to the checkpoint by the run before it says "start").
        for line in _read_lines(self.out / "metrics.jsonl"):
            if 0 < int(line.get("step", 0)) <= step:
                self._on_step(
                    {"step": line["step"], "total_steps": ev.get("total_steps", 0), "metrics": line}
                )
        self.progress.update(step=step)
        write_line(
            "job.training",
            f"job {self.job_id}: training {total} steps" + (f", resuming at step {step}" if step else ""),
            loop=self.loop,
            job=self.job_id,
        )

    def _on_step(self, ev: dict[str, Any]) -> None:
        m = ev.get("metrics") or {}
        step = int(ev["step"])
        self.progress.update(
            step=step,
            total_steps=int(ev.get("total_steps", 0)),
            loss=m.get("loss"),
            tokens_per_s=m.get("tokens_per_s"),
            eta_s=m.get("eta_s"),
        )
        total = int(ev.get("total_steps", 0))
        tenth = step * 10 // total if total else -1
        if tenth > self._told and tenth > 0:
            self._told = tenth
            write_line(
                "job.progress",
                f"job {self.job_id}: {progress_line(step, total, m)}",
                loop=self.loop,
                job=self.job_id,
            )
        known = {"step", "loss", "lr", "grad_norm", "tokens_per_s"}
        self._pending.append(
            {
                "job_id": self.job_id,
                "step": step,
                "loss": m.get("loss"),
                "learning_rate": m.get("lr"),
                "grad_norm": m.get("grad_norm"),
                "tokens_per_s": m.get("tokens_per_s"),
                "extra": {k: v for k, v in m.items() if k not in known},
            }
        )

    def _flush_metrics(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        with self.db.session() as s:
            dialect = s.get_bind().dialect.name
            if dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            stmt = insert(TrainingMetric).values(rows)
            stmt = stmt.on_conflict_do_update(
                index_elements=["job_id", "step"],
                set_={
                    c: getattr(stmt.excluded, c)
                    for c in ("loss", "learning_rate", "grad_norm", "tokens_per_s", "extra")
                },
            )
            s.execute(stmt)

    def _tail(self) -> str:
        return "\n".join(self.tail)

    @staticmethod
    def _kill(proc: subprocess.Popen[str], grace: float = 10.0) -> None:
        """SIGTERM to the whole group (the run checkpoints and exits), SIGKILL after ``grace`` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue
