"""The daemon running real (tiny-model) training jobs: progress, control within a step, retries, skip."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_support import loop_settings, tiny_train, training_processes, wait_for
from sqlalchemy import func, select

from learnloop.config import Settings
from learnloop.daemon import queue
from learnloop.daemon.service import Daemon
from learnloop.store.db import Database
from learnloop.store.models import Event, TrainingMetric
from training_support import SFT_ROWS, write_jsonl


@contextlib.contextmanager
def running(settings: Settings, db: Database) -> Iterator[Daemon]:
    d = Daemon(settings, db, scoring=False)
    t = threading.Thread(target=d.run, kwargs={"install_signals": False}, daemon=True)
    t.start()
    try:
        yield d
    finally:
        d.stop()
        t.join(60)
        assert not t.is_alive(), "the daemon did not stop"


def _job_config(tiny: Path, tmp: Path, **kw: Any) -> dict[str, Any]:
    data = write_jsonl(tmp / "sft.jsonl", SFT_ROWS)
    return {"algorithm": "sft", "base_model": str(tiny), "dataset": str(data), **tiny_train(**kw)}


def _state(db: Database, job_id: int) -> queue.JobInfo:
    return queue.get_job(db, job_id)


def _failed(db: Database, job_id: int, what: str) -> queue.JobInfo:
    """Wait for the job to fail and return it (the fake launchers below never succeed)."""
    return wait_for(lambda: _state(db, job_id).state == "failed" and _state(db, job_id), 60, 0.1, what)


def _kinds(db: Database, job_id: int) -> list[str]:
    with db.read_session() as s:
        return list(s.scalars(select(Event.kind).where(Event.job_id == job_id).order_by(Event.id)))


def test_training_job_reports_progress_and_metrics(
    db: Database, settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    s = loop_settings(settings)
    s = s.model_copy(update={"loops": []})
    job, _ = queue.submit(db, "train", {"config": _job_config(tiny_model_dir, tmp_path, max_steps=6)})
    with running(s, db):
        done = wait_for(
            lambda: _state(db, job.id).state in ("succeeded", "failed") and _state(db, job.id),
            120,
            0.2,
            "the job",
        )
    assert done.state == "succeeded", done.error
    assert (
        set(done.progress) >= {"step", "total_steps", "loss", "tokens_per_s", "eta_s"}
        and done.progress["step"] == 6
    )
    assert Path(done.result["adapter_dir"], "adapter_model.safetensors").is_file()
    with db.read_session() as sess:
        steps = list(
            sess.scalars(
                select(TrainingMetric.step)
                .where(TrainingMetric.job_id == job.id)
                .order_by(TrainingMetric.step)
            )
        )
        loss = sess.scalar(
            select(func.count()).select_from(TrainingMetric).where(TrainingMetric.loss.is_not(None))
        )
    assert steps == [1, 2, 3, 4, 5, 6] and loss == 6
    assert _kinds(db, job.id) == ["job.queued", "job.started", "job.succeeded"]
    logs = list((Path(s.data_dir) / "logs").glob("learnloop-*.log"))
    assert logs and f"job {job.id} trained 6 steps" in logs[0].read_text()


def test_crashing_training_is_retried_then_fails_with_its_output(
    db: Database, settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    s = loop_settings(settings).model_copy(update={"loops": []})
    bad = _job_config(tiny_model_dir, tmp_path)
    bad["dataset"] = str(tmp_path / "missing.jsonl")
    job, _ = queue.submit(db, "train", {"config": bad}, max_attempts=2)
    with running(s, db):
        done = wait_for(
            lambda: _state(db, job.id).state in ("succeeded", "failed") and _state(db, job.id),
            120,
            0.2,
            "the job",
        )
    assert done.state == "failed" and done.attempts == 2
    assert "training process exit code" in done.error and "missing.jsonl" in done.error
    assert "missing.jsonl" in done.output_tail
    kinds = _kinds(db, job.id)
    assert kinds.count("job.started") == 2 and kinds.count("job.retried") == 1 and kinds[-1] == "job.failed"


def test_pause_resume_stop_within_a_step(
    db: Database, settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    s = loop_settings(settings).model_copy(update={"loops": []})
    job, _ = queue.submit(
        db, "train", {"config": _job_config(tiny_model_dir, tmp_path, max_steps=400, checkpoint_every=50)}
    )
    with running(s, db):
        wait_for(lambda: _state(db, job.id).progress.get("step", 0) >= 3, 120, 0.1, "training steps")
        t0 = time.monotonic()
        queue.control(db, job.id, "pause")
        paused = wait_for(
            lambda: _state(db, job.id).state == "paused" and _state(db, job.id), 30, 0.05, "pause"
        )
        pause_latency = time.monotonic() - t0
        at = paused.progress["step"]
        time.sleep(1.5)
        assert _state(db, job.id).progress["step"] == at  # no step while paused
        queue.control(db, job.id, "resume")
        wait_for(lambda: _state(db, job.id).progress["step"] > at, 30, 0.05, "steps after resume")
        t0 = time.monotonic()
        queue.control(db, job.id, "stop")
        stopped = wait_for(
            lambda: _state(db, job.id).lease_owner is None and _state(db, job.id), 30, 0.05, "stop"
        )
        stop_latency = time.monotonic() - t0
    assert stopped.state == "paused" and stopped.desired_state == "pause"
    step = stopped.progress["step"]
    assert step < 400
    # The stop wrote a checkpoint at the very step it stopped on: nothing trained is lost.
    assert Path(stopped.progress["checkpoint"]).name == f"checkpoint-{step}"
    assert (
        pause_latency < 5 and stop_latency < 15
    )  # the row is read every 0.25 s; the run checks before each step
    kinds = _kinds(db, job.id)
    assert [
        "job.pause_requested",
        "job.paused",
        "job.resume_requested",
        "job.resumed",
        "job.stop_requested",
        "job.stopped",
    ] == [k for k in kinds if k not in ("job.queued", "job.started")]


def test_skip_moves_on_and_the_skipped_job_resumes_later(
    db: Database, settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    s = loop_settings(settings).model_copy(update={"loops": []})
    # Long enough that the skip lands mid-run even when the machine is busy and the control is seen late.
    first, _ = queue.submit(
        db, "train", {"config": _job_config(tiny_model_dir, tmp_path, max_steps=60, checkpoint_every=2)}
    )
    second, _ = queue.submit(db, "train", {"config": _job_config(tiny_model_dir, tmp_path, max_steps=4)})
    with running(s, db):
        wait_for(lambda: _state(db, first.id).progress.get("step", 0) >= 4, 120, 0.1, "first job's steps")
        queue.control(db, first.id, "skip")
        wait_for(lambda: _state(db, second.id).state == "succeeded", 120, 0.2, "the second job")
        assert _state(db, second.id).started_at > _state(db, first.id).started_at
        done = wait_for(
            lambda: _state(db, first.id).state == "succeeded" and _state(db, first.id),
            120,
            0.2,
            "the skipped job",
        )
    assert done.attempts == 1  # the skip did not count as a failed attempt
    out = Path(done.result["adapter_dir"]).parent
    text = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in text] == list(range(1, 61))
    kinds = _kinds(db, first.id)
    assert kinds.count("job.started") == 2 and "job.skipped" in kinds


def _with_daemon(settings: Settings, **daemon: Any) -> Settings:
    data = settings.model_dump()
    data["loops"] = []
    data["daemon"] = {
        **data["daemon"],
        "poll_interval": 0.2,
        "heartbeat_seconds": 0.5,
        "retry_backoff": 0.0,
        **daemon,
    }
    return Settings.model_validate(data)


def test_watchdog_kills_and_retries_a_stalled_run(
    db: Database, settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # A "training" that prints a line and then hangs without ever taking a step.
    hang = [sys.executable, "-c", "import time; print('loading...', flush=True); time.sleep(600)"]
    s = _with_daemon(settings, launcher=hang, stall_timeout=2.0)
    job, _ = queue.submit(db, "train", {"config": _job_config(tiny_model_dir, tmp_path)}, max_attempts=2)
    t0 = time.monotonic()
    with running(s, db):
        done = _failed(db, job.id, "the stalled job to fail")
    took = time.monotonic() - t0
    assert (
        done.attempts == 2
        and "stalled: no progress for 2 s" in done.error
        and "loading..." in done.output_tail
    )
    kinds = _kinds(db, job.id)
    assert kinds.count("job.stalled") == 2 and kinds.count("job.retried") == 1
    with db.read_session() as sess:
        stalls = list(
            sess.scalars(
                select(Event.created_at)
                .where(Event.job_id == job.id, Event.kind.in_(["job.started", "job.stalled"]))
                .order_by(Event.id)
            )
        )
    # Each attempt is declared stalled within twice stall_timeout of its start (plus process start-up).
    assert all((b - a).total_seconds() < 2 * 2.0 + 3 for a, b in zip(stalls[::2], stalls[1::2]))
    assert took < 40


def test_a_killed_training_process_is_reported(
    db: Database, settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    oom = [
        sys.executable,
        "-c",
        "import os, signal; print('allocating', flush=True); os.kill(os.getpid(), signal.SIGKILL)",
    ]
    s = _with_daemon(settings, launcher=oom)
    job, _ = queue.submit(db, "train", {"config": _job_config(tiny_model_dir, tmp_path)}, max_attempts=1)
    with running(s, db):
        done = _failed(db, job.id, "the killed job")
    assert (
        "killed by signal 9 (SIGKILL: out of memory?)" in done.error
        and done.output_tail.strip() == "allocating"
    )


def test_a_launcher_runs_training_on_two_processes_that_stop_and_resume_together(
    sqlite_db: Database, settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # `accelerate launch --multi_gpu` starts its workers through torch.distributed.run, as this does; on a
    # CPU the two ranks talk over gloo. The daemon only sees one command and one process group.
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    db = sqlite_db
    s = _with_daemon(settings, launcher=launcher)
    steps = 300
    job, _ = queue.submit(
        db, "train", {"config": _job_config(tiny_model_dir, tmp_path, max_steps=steps, checkpoint_every=50)}
    )
    with running(s, db):
        wait_for(lambda: _state(db, job.id).progress.get("step", 0) >= 3, 180, 0.1, "steps on two ranks")
        queue.control(db, job.id, "stop")
        stopped = wait_for(
            lambda: _state(db, job.id).lease_owner is None and _state(db, job.id), 60, 0.05, "stop"
        )
        assert not training_processes(str(tmp_path)), "a rank outlived the stop"
        at = stopped.progress["step"]
        assert stopped.state == "paused" and at < steps
        assert Path(stopped.progress["checkpoint"]).name == f"checkpoint-{at}"  # both ranks stopped there
        queue.control(db, job.id, "resume")
        done = wait_for(
            lambda: _state(db, job.id).state in ("succeeded", "failed") and _state(db, job.id),
            300,
            0.2,
            "the resumed job",
        )
    assert done.state == "succeeded", done.error + (done.output_tail or "")
    lines = (Path(done.result["adapter_dir"]).parent / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))  # rank 0 alone writes, each step once
    # Each rank takes every second micro-batch: one step covers two micro-batches of the data.
    batches_per_epoch = -(-len(SFT_ROWS) // 4)
    assert metrics[0]["epoch"] == pytest.approx(2 / batches_per_epoch)


def test_training_threads_reach_the_training_process(
    sqlite_db: Database,
    settings: Settings,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Stands in for the training module: reports the intra-op pool torch built at import, then fails.
    probe = [sys.executable, "-c", "import torch; print('torch threads', torch.get_num_threads()); exit(3)"]
    # Without the setting torch would size its pool by the cores (2 here); parallel test workers set
    # OMP_NUM_THREADS=1 for themselves and their children, which would make this pass for nothing.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    s = _with_daemon(settings, launcher=probe, training_threads=1)
    job, _ = queue.submit(
        sqlite_db, "train", {"config": _job_config(tiny_model_dir, tmp_path)}, max_attempts=1
    )
    with running(s, sqlite_db):
        done = _failed(sqlite_db, job.id, "the probe")
    assert "torch threads 1" in done.output_tail
