"""Rows for the watch tests: what the daemon, registry, evaluation and serving stages would have written.

The watch stage reads tables, so its tests write the rows directly (through the store's own
functions where there is one: ingest, the registry's alias move, record_event).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from learnloop.registry import move
from learnloop.store.db import Database
from learnloop.store.events import record_event
from learnloop.store.models import (
    Control,
    Dataset,
    DesiredState,
    Evaluation,
    Job,
    JobKind,
    JobState,
    LoopState,
    ModelVersion,
    TrainingMetric,
    VersionState,
    utcnow,
)
from learnloop.store.records import parse_batch
from learnloop.store.trajectories import ingest


def chat(user: str, answer: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def tool_chat() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You help with orders."},
        {"role": "user", "content": "Where is order 42?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup_order", "arguments": '{"order": 42}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'},
        {"role": "assistant", "content": "Order 42 has shipped and arrives tomorrow."},
    ]


def seed_trajectories(db: Database, now: dt.datetime | None = None) -> dict[str, int]:
    """Production, teacher and served trajectories over a few days, scored and with feedback."""
    now = now or utcnow()
    items = [
        {
            "id": "t-tool",
            "scenario": "support",
            "source": "production",
            "tags": ["web", "orders"],
            "messages": tool_chat(),
            "created_at": now.isoformat(),
            "scores": {"resolved": 1.0},
            "feedback": {"thumbs": "up"},
        }
    ]
    for i in range(12):
        day = now - dt.timedelta(days=i % 4, minutes=i)
        items.append(
            {
                "id": f"t-prod-{i}",
                "scenario": "math" if i % 2 else "support",
                "source": "production",
                "tags": ["web"] if i % 3 else ["api"],
                "messages": chat(f"what is {i}+{i}?", str(2 * i)),
                "created_at": day.isoformat(),
                "scores": {"correct": 1.0 if i % 4 else -0.5},
            }
        )
    for i in range(3):
        items.append(
            {
                "id": f"t-teacher-{i}",
                "scenario": "math",
                "source": "teacher",
                "messages": chat(f"teach {i}", "ok"),
                "created_at": (now - dt.timedelta(days=1)).isoformat(),
            }
        )
    for i in range(10):
        _version = "v0002" if i % 2 else "v0001"
        items.append(
            {
                "id": f"t-served-{i}",
                "scenario": "math",
                "source": "served",
                "model": "learnloop",
                "messages": chat(f"served {i}", "answer"),
                "created_at": (now - dt.timedelta(days=i % 3)).isoformat(),
                "metadata": {"latency_ms": 100 + 10 * i},
                "scores": {"correct": 0.5 + 0.05 * i},
            }
        )
    with db.session() as s:
        result = ingest(s, parse_batch({"trajectories": items}))
    # model_version is what serving stamps on its captured traffic.
    from sqlalchemy import update

    from learnloop.store.models import Trajectory

    with db.session() as s:
        for i in range(10):
            s.execute(
                update(Trajectory)
                .where(Trajectory.id == f"t-served-{i}")
                .values(model_version="v0002" if i % 2 else "v0001")
            )
    return {"inserted": result.inserted}


def _files(root: Path, vid: str) -> dict[str, Any]:
    """An adapter folder for ``vid`` and its hashes, as the registry records them (promotion checks them)."""
    from learnloop.registry.files import hash_folder

    folder = root / vid
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "seeded": vid}))
    return {"artifact_path": str(folder), "files": hash_folder(folder)}


def seed_loop(
    db: Database,
    *,
    steps: int = 60,
    now: dt.datetime | None = None,
    with_running: bool = True,
    artifacts: Path | None = None,
) -> dict[str, Any]:
    """Jobs in every state, a running job with progress and per-step metrics, versions, evaluations,
    aliases, events, a loop.

    The versions are as the registry leaves them (adapter files with hashes, gate verdicts): v0001 and v0002
    passed the gate, v0003 was rejected. ``artifacts``: where their folders go (a new temporary folder by
    default).
    """
    now = now or utcnow()
    root = artifacts or Path(tempfile.mkdtemp(prefix="learnloop-seed-"))
    with db.session() as s:
        ds = Dataset(
            name="sft-nightly",
            kind="sft",
            content_hash="ab" * 32,
            item_ids=["t-prod-1", "t-prod-2"],
            stats={
                "count": 2,
                "length": {
                    "tokenizer": "approx",
                    "count": 2,
                    "max_length": 2048,
                    "p50": 40,
                    "p95": 80,
                    "p99": 90,
                    "max": 91,
                    "mean": 55.0,
                    "truncated": 0,
                    "truncated_share": 0.0,
                    "suggested_max_length": 128,
                    "longest": [{"item": "t-prod-1", "tokens": 91}],
                },
                "rewards": {"of": "trajectory reward", "mean": 0.8},
                # The shape the datasets stage's BuildReport writes.
                "funnel": {"matched": 3, "kept": 2},
                "rejected": {
                    "count": 1,
                    "by_reason": {"no assistant answer": 1},
                    "items": [{"id": "t-prod-0", "reason": "no assistant answer"}],
                    "listed": 1,
                },
            },
            created_at=now - dt.timedelta(hours=3),
        )
        s.add(ds)
        s.flush()
        done = Job(
            kind=JobKind.train,
            state=JobState.succeeded,
            priority=100,
            loop="main",
            attempts=1,
            created_at=now - dt.timedelta(days=2),
            started_at=now - dt.timedelta(days=2),
            finished_at=now - dt.timedelta(days=2) + dt.timedelta(minutes=30),
            progress={"step": 100, "total_steps": 100, "loss": 0.9},
        )
        failed = Job(
            kind=JobKind.train,
            state=JobState.failed,
            priority=100,
            loop="main",
            attempts=3,
            error="CUDA out of memory",
            created_at=now - dt.timedelta(hours=5),
            started_at=now - dt.timedelta(hours=5),
            finished_at=now - dt.timedelta(minutes=10),
            output_tail="Traceback ...\nRuntimeError: CUDA out of memory",
        )
        running = Job(
            kind=JobKind.train,
            state=JobState.running,
            desired_state=DesiredState.run,
            priority=50,
            loop="main",
            attempts=1,
            created_at=now - dt.timedelta(minutes=20),
            started_at=now - dt.timedelta(minutes=20),
            heartbeat_at=now,
            lease_owner="worker-1",
            lease_expires_at=now + dt.timedelta(minutes=5),
            payload={"dataset_id": ds.id, "algorithm": "sft"},
            progress={
                "step": steps,
                "total_steps": 200,
                "loss": 1.25,
                "tokens_per_s": 321.5,
                "eta_s": 1400.0,
            },
        )
        queued = [
            Job(kind=JobKind.evaluate, state=JobState.queued, priority=p, created_at=now)
            for p in (10, 100, 100)
        ]
        s.add_all([done, failed, *queued] + ([running] if with_running else []))
        s.flush()
        for step in range(1, steps + 1 if with_running else 1):
            s.add(
                TrainingMetric(
                    job_id=running.id,
                    step=step,
                    loss=3.0 * math.exp(-step / 25) + 1.0,
                    learning_rate=2e-4 * min(1, step / 10),
                    tokens_per_s=300 + step % 7,
                    created_at=now - dt.timedelta(seconds=steps - step),
                )
            )
        v1 = ModelVersion(
            id="v0001",
            base_model="smollm2",
            loop="main",
            algorithm="sft",
            dataset_id=ds.id,
            job_id=done.id,
            state=VersionState.archived,
            ever_served=True,
            created_at=now - dt.timedelta(days=2),
            metrics={"loss": 0.9},
            gate={"passed": True, "verdict": "promote", "reasons": ["reward +0.11 over base"]},
            **_files(root, "v0001"),
        )
        v2 = ModelVersion(
            id="v0002",
            base_model="smollm2",
            loop="main",
            algorithm="sft",
            parent_id="v0001",
            dataset_id=ds.id,
            state=VersionState.serving,
            ever_served=True,
            created_at=now - dt.timedelta(days=1),
            gate={"passed": True, "verdict": "promote", "reasons": ["reward +0.11 over v0001"]},
            **_files(root, "v0002"),
        )
        v3 = ModelVersion(
            id="v0003",
            base_model="smollm2",
            loop="main",
            algorithm="dpo",
            parent_id="v0002",
            state=VersionState.rejected,
            created_at=now - dt.timedelta(hours=2),
            gate={"passed": False, "verdict": "reject", "reasons": ["win rate 0.41 < 0.5"]},
            **_files(root, "v0003"),
        )
        s.add_all([v1, v2, v3])
        s.flush()
        s.add_all(
            [
                Evaluation(
                    candidate_id="v0001",
                    baseline_id="base",
                    verdict="promote",
                    metrics={"reward": 0.61, "win_rate": 0.58},
                    gate={"reasons": ["reward +0.11 over base"]},
                    created_at=now - dt.timedelta(days=2),
                ),
                Evaluation(
                    candidate_id="v0002",
                    baseline_id="v0001",
                    verdict="promote",
                    metrics={"reward": 0.72, "win_rate": 0.63},
                    gate={"reasons": ["reward +0.11 over v0001"]},
                    created_at=now - dt.timedelta(days=1),
                ),
                Evaluation(
                    candidate_id="v0003",
                    baseline_id="v0002",
                    verdict="reject",
                    metrics={"reward": 0.64, "win_rate": 0.41},
                    gate={"reasons": ["win rate 0.41 < 0.5"]},
                    created_at=now - dt.timedelta(hours=1),
                ),
            ]
        )
        s.add(
            LoopState(
                name="main",
                state="waiting",
                head_version_id="v0002",
                last_check_at=now - dt.timedelta(seconds=30),
                next_check_at=now + dt.timedelta(seconds=270),
                readiness={"ready": False, "reasons": ["12 new trajectories, 50 needed"]},
            )
        )
        s.add(Control(key="daemon.frozen", value={"on": False}))
        ids = {
            "running": running.id if with_running else None,
            "failed": failed.id,
            "done": done.id,
            "queued": [q.id for q in queued],
            "dataset": ds.id,
        }
    move(db, None, "learnloop", "promote", "v0001", actor="daemon", reason="gate passed")
    move(db, None, "learnloop", "promote", "v0002", actor="daemon", reason="gate passed")
    # Someone tries the rejected v0003 on a tenth of the traffic anyway.
    move(db, None, "learnloop", "split", "v0003", share=0.1, force=True, actor="tester")
    if with_running:
        record_event(db, "job.started", f"job {ids['running']} started", job_id=ids["running"], loop="main")
    record_event(
        db,
        "job.failed",
        f"job {ids['failed']} failed: CUDA out of memory",
        level="error",
        job_id=ids["failed"],
        loop="main",
    )
    record_event(db, "version.promoted", "v0002 promoted", version_id="v0002")
    return ids
