"""Chaos: the daemon SIGKILLed at up to 20 random points of its loop's two cycles, restarted each time.

It must end with every job finished (retried cleanly where it was cut), no job run to completion
twice, no duplicate versions or promotions, and no training process left behind by a killed daemon.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
from daemon_support import add, daemon_env, start_daemon, tiny_train, traces, training_processes, wait_for
from sqlalchemy import func, select

from learnloop.daemon import queue
from learnloop.store.db import Database
from learnloop.store.models import AliasEvent, Event, Job, LoopState, ModelVersion, TrainingMetric

KILLS = 20
STEPS = 8
SEED = int(os.environ.get("LEARNLOOP_CHAOS_SEED", "1234"))


def _toml(path: Path, tiny: Path) -> Path:
    train = tiny_train(max_steps=STEPS, checkpoint_every=2)
    lines = [
        "[[loops]]",
        'name = "qa"',
        'algorithm = "sft"',
        'scenario = "qa"',
        'sources = ["teacher"]',
        f'base_model = "{tiny}"',
        "[loops.triggers]",
        "min_new_examples = 10",
        "min_holdout = 0",  # the gate is not what this test drills: train on the first ten
        "check_interval = 0.5",
        "[loops.train]",
        *(f"{k} = {v!r}".replace("'", '"') for k, v in train.items() if k != "lora"),
        "[loops.train.lora]",
        "r = 4",
        "alpha = 8",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _running(db: Database) -> list[queue.JobInfo]:
    return queue.list_jobs(db, state="running")


def _soft_wait(pred: object, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and not pred():  # type: ignore[operator]
        time.sleep(0.05)


@pytest.mark.slow(seconds=160)
@pytest.mark.timeout(1800)  # 20 daemon restarts, each importing torch: minutes on a busy 2-core machine
def test_sigkill_at_random_points_of_cycles(
    sqlite_db: Database, tiny_model_dir: Path, tmp_path: Path
) -> None:
    db = sqlite_db
    rng = random.Random(SEED)
    env = daemon_env(tmp_path / "data", db.url, _toml(tmp_path / "learnloop.toml", tiny_model_dir))
    marker = str(tmp_path / "data")
    log = tmp_path / "daemon.log"
    add(db, traces("a", 12))
    second_batch = False
    started = time.monotonic()
    kill_points = []

    def settled() -> bool:
        jobs = queue.list_jobs(db)
        return len(jobs) >= 2 and all(j.state in ("succeeded", "failed", "cancelled") for j in jobs)

    for i in range(KILLS):
        if second_batch and settled():
            # Both cycles are over: a kill point now would land on an idle daemon, and each waited
            # up to 150 s for a job that never comes.
            break
        proc = start_daemon(env, log, scoring=True)
        t0 = time.monotonic()
        # Points drawn across the cycle whatever the machine's speed: during start-up, soon after a
        # claim (dataset, model loading), or at a random training step (mid-step, mid-checkpoint).
        phase = rng.choice(["startup", "claimed", "step", "step", "step"])

        def mine(pid: int = proc.pid) -> list:
            return [j for j in _running(db) if (j.lease_owner or "").endswith(f":{pid}")]

        if phase == "startup":
            time.sleep(rng.uniform(0.3, 4.0))
        elif phase == "claimed":
            _soft_wait(mine, 60)
            time.sleep(rng.uniform(0.0, 3.0))
        else:
            _soft_wait(mine, 60)
            now = max((j.progress.get("step") or 0 for j in mine()), default=0)
            target = now + rng.randint(1, 3)
            if target > STEPS:  # training is done: cut the stages after it (adapter, register, succeed)
                phase = "after-training"
                _soft_wait(lambda mine=mine: not mine() or any("adapter_dir" in j.result for j in mine()), 90)
                time.sleep(rng.uniform(0.0, 0.5))
            else:
                _soft_wait(
                    lambda mine=mine, target=target: any(
                        (j.progress.get("step") or 0) >= target for j in mine()
                    ),
                    90,
                )
                time.sleep(rng.uniform(0.0, 0.3))
        delay = f"{phase}+{time.monotonic() - t0:.1f}s"
        with db.read_session() as s:
            snapshot = [
                (j.id, j.state.value, (j.progress or {}).get("step"), sorted(j.result or {}))
                for j in s.scalars(select(Job))
            ]
        kill_points.append((delay, snapshot))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        # The kernel takes the training child down with its daemon.
        wait_for(
            lambda: not training_processes(marker), 10, 0.1, f"orphaned training processes after kill {i + 1}"
        )
        if not second_batch and any(j.state == "succeeded" for j in queue.list_jobs(db)):
            add(db, traces("b", 12))  # data for a second cycle, arriving mid-chaos
            second_batch = True
    if not second_batch:
        add(db, traces("b", 12))

    final = start_daemon(env, log, scoring=True)
    try:
        wait_for(settled, 600, 0.5, "both cycles to finish")

        # The cycles may finish before this daemon gets going: SIGTERM is its to handle once it runs.
        def final_started() -> bool:
            with db.read_session() as s:
                messages = s.scalars(select(Event.message).where(Event.kind == "daemon.started")).all()
            return any(f":{final.pid} started" in m for m in messages)

        wait_for(final_started, 120, 0.2, "the final daemon to start")
    finally:
        final.send_signal(signal.SIGTERM)
        assert final.wait(60) == 0
    assert not training_processes(marker)
    took = time.monotonic() - started

    jobs = queue.list_jobs(db)
    detail = f"kill points (delay s, jobs): {kill_points}"
    assert [j.state for j in jobs] == ["succeeded", "succeeded"], detail + "".join(
        f"\n{j.id}: {j.error}" for j in jobs
    )
    with db.read_session() as s:
        for j in jobs:
            assert j.attempts <= j.max_attempts
            succeeded = s.scalar(
                select(func.count())
                .select_from(Event)
                .where(Event.job_id == j.id, Event.kind == "job.succeeded")
            )
            assert succeeded == 1  # ran to completion once
            steps = list(
                s.scalars(
                    select(TrainingMetric.step)
                    .where(TrainingMetric.job_id == j.id)
                    .order_by(TrainingMetric.step)
                )
            )
            assert steps == list(range(1, STEPS + 1))
            assert (
                s.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.job_id == j.id))
                <= 1
            )
        keys = list(s.scalars(select(Job.idempotency_key)))
        promoted = list(s.scalars(select(AliasEvent.to_version).where(AliasEvent.action == "promote")))
        loop = s.get(LoopState, "qa")
    assert sorted(keys) == ["loop:qa:cycle:1", "loop:qa:cycle:2"]
    assert len(promoted) == len(set(promoted))
    assert jobs[0].payload["since"] == jobs[1].payload["until"] and loop.last_outcome["job_id"] == jobs[0].id
    print(f"chaos: {len(kill_points)} kills, {took:.0f} s; {detail}")
