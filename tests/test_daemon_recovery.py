"""Daemons as real processes: kill -9 and SIGTERM mid-training, several daemons on one PostgreSQL database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from daemon_support import daemon_env, start_daemon, tiny_train, training_processes, wait_for
from sqlalchemy import select

from learnloop.daemon import queue
from learnloop.store.db import Database
from learnloop.store.models import Event, TrainingMetric
from learnloop.training.run import train, validate_config
from training_support import SFT_ROWS, adapter_weights, write_jsonl

# Tiny-model steps take about 10 ms on an idle machine: the run must be long enough that it is still
# training when the test's SIGTERM lands, whatever the machine's speed.
STEPS = 300


def _started(db: Database, job_id: int) -> int:
    with db.read_session() as s:
        return len(
            list(s.scalars(select(Event.id).where(Event.job_id == job_id, Event.kind == "job.started")))
        )


def _stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


def test_kill_9_then_sigterm_mid_training_end_with_uninterrupted_weights(
    sqlite_db: Database, tiny_model_dir: Path, tmp_path: Path
) -> None:
    db = sqlite_db
    data = write_jsonl(tmp_path / "sft.jsonl", SFT_ROWS)
    cfg = {
        "algorithm": "sft",
        "base_model": str(tiny_model_dir),
        "dataset": str(data),
        **tiny_train(
            max_steps=STEPS, checkpoint_every=4, batch_size=2, lora={"r": 4, "alpha": 8, "dropout": 0.1}
        ),
    }
    reference = train(validate_config({**cfg, "output_dir": str(tmp_path / "reference")}))
    job, _ = queue.submit(db, "train", {"config": cfg})
    env = daemon_env(tmp_path / "data", db.url)
    log = tmp_path / "daemon.log"
    marker = str(tmp_path / "data")

    first = start_daemon(env, log)
    try:
        wait_for(
            lambda: queue.get_job(db, job.id).progress.get("step", 0) >= 9,
            180,
            0.05,
            "steps past checkpoint 8",
        )
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        # The kernel kills the training child with its daemon: nothing trains on unsupervised.
        wait_for(lambda: not training_processes(marker), 10, 0.1, "the orphaned training process to die")
    finally:
        if first.poll() is None:
            first.kill()

    second = start_daemon(env, log)
    try:
        # The dead daemon's job is taken back at once (its pid is gone) and resumes from checkpoint-8.
        wait_for(
            lambda: _started(db, job.id) == 2 and queue.get_job(db, job.id).progress.get("step", 0) >= 14,
            180,
            0.05,
            "the resumed run",
        )
        t0 = time.monotonic()
        assert _stop(second) == 0
        stopped_in = time.monotonic() - t0
        assert not training_processes(marker)
    finally:
        if second.poll() is None:
            second.kill()
    info = queue.get_job(db, job.id)
    assert info.state == "queued" and info.lease_owner is None and info.progress["step"] < STEPS
    assert stopped_in < 30

    third = start_daemon(env, log)
    try:
        done = wait_for(
            lambda: queue.get_job(db, job.id).state in ("succeeded", "failed") and queue.get_job(db, job.id),
            180,
            0.2,
            "the job to finish",
        )
    finally:
        assert _stop(third) == 0
    assert done.state == "succeeded", done.error + (done.output_tail or "")
    assert done.attempts == 1 and _started(db, job.id) == 3  # neither interruption counted as a failure
    ref, got = adapter_weights(reference.adapter_dir), adapter_weights(Path(done.result["adapter_dir"]))
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.allclose(ref[k], got[k], rtol=1e-5, atol=1e-6), k
    with db.read_session() as s:
        steps = list(
            s.scalars(
                select(TrainingMetric.step)
                .where(TrainingMetric.job_id == job.id)
                .order_by(TrainingMetric.step)
            )
        )
        kinds = list(s.scalars(select(Event.kind).where(Event.job_id == job.id).order_by(Event.id)))
    assert steps == list(range(1, STEPS + 1))
    assert "job.stalled" in kinds and "job.released" in kinds and kinds[-1] == "job.succeeded"
    lines = [
        json.loads(x)["step"]
        for x in (Path(done.result["adapter_dir"]).parent / "metrics.jsonl").read_text().splitlines()
    ]
    assert lines == list(range(1, STEPS + 1))


@pytest.mark.postgres
def test_two_daemons_on_postgresql_never_run_one_job(
    pg_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from conftest import _reset_pg

    db = Database(pg_url)
    db.upgrade()
    _reset_pg(db)
    data = write_jsonl(tmp_path / "sft.jsonl", SFT_ROWS)
    cfg = {
        "algorithm": "sft",
        "base_model": str(tiny_model_dir),
        "dataset": str(data),
        **tiny_train(max_steps=3),
    }
    ids = [queue.submit(db, "train", {"config": cfg})[0].id for _ in range(3)]
    ids += [queue.submit(db, "score")[0].id for _ in range(30)]
    env = daemon_env(tmp_path / "data", pg_url)
    daemons = [start_daemon(env, tmp_path / f"d{i}.log") for i in range(2)]
    try:
        wait_for(
            lambda: all(j.state == "succeeded" for j in queue.list_jobs(db, limit=100)), 300, 0.5, "every job"
        )
    finally:
        codes = [_stop(d) for d in daemons]
    assert codes == [0, 0]
    with db.read_session() as s:
        rows = s.execute(select(Event.job_id, Event.data).where(Event.kind == "job.started")).all()
    started = [jid for jid, _ in rows]
    assert sorted(started) == sorted(ids)  # every job started exactly once
    owners = {d["owner"] for _, d in rows}
    assert len(owners) == 2, f"both daemons should have taken jobs: {owners}"
    db.dispose()
