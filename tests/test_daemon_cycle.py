"""A loop's cycle end to end: captured trajectories -> trigger -> dataset ->
guardrail -> training (-> registry)."""

from __future__ import annotations

from pathlib import Path

from daemon_support import add, loop_settings, tiny_train, traces, wait_for
from sqlalchemy import select
from test_daemon_worker import running

from learnloop.config import Settings
from learnloop.daemon import loops, queue
from learnloop.daemon.cycle import registry_available
from learnloop.store.db import Database
from learnloop.store.models import Event, LoopState, ModelVersion


def _finished(db: Database, job_id: int) -> queue.JobInfo | None:
    job = queue.get_job(db, job_id)
    return job if job.state in ("succeeded", "failed", "cancelled") else None


def test_cycles_from_trajectories_to_a_trained_adapter(
    db: Database, settings: Settings, tiny_model_dir: Path
) -> None:
    # A gate the tiny random model can pass (it learns nothing in 4 steps): every stage must happen.
    gate = {
        "min_examples": 1,
        "margin": -10.0,
        "max_p95_latency_ratio": 1000.0,
        "max_json_validity_drop": 1.0,
        "max_scenario_regression": 10.0,
        "max_refusal_increase": 1.0,
    }
    s = loop_settings(
        settings,
        base_model=str(tiny_model_dir),
        train=tiny_train(max_steps=4),
        gate=gate,
        eval_limit=2,
        triggers={"min_new_examples": 20, "check_interval": 0.5},
    )
    add(db, [{**t, "holdout": True} for t in traces("h", 2)])
    add(db, traces("a", 12))
    with running(s, db):
        first_check = wait_for(lambda: loops.status(db, s)[0]["last_check_at"], 60, 0.1, "a first check")
        assert queue.list_jobs(db) == []  # 12/20: not yet
        assert "12/20 new teacher traces (scenario qa)" in loops.status(db, s)[0]["reasons"]
        # Checked again and again with nothing new: the log says why it waits once, not every check.
        later = wait_for(
            lambda: (c := loops.status(db, s)[0]["last_check_at"]) != first_check and c, 60, 0.1, "a check"
        )
        wait_for(
            lambda: loops.status(db, s)[0]["last_check_at"] not in (first_check, later), 60, 0.1, "a check"
        )
        with db.read_session() as sess:
            skipped = list(sess.scalars(select(Event.message).where(Event.kind == "trigger.skipped")))
        assert skipped == ["loop qa: 12/20 new teacher traces (scenario qa)"], skipped
        add(db, traces("b", 10))
        first = wait_for(lambda: queue.list_jobs(db), 60, 0.1, "the trigger")[0]
        done = wait_for(lambda: _finished(db, first.id), 180, 0.2, "the first cycle")
        assert done.state == "succeeded", done.error
        assert done.result["examples"] == 22 and done.result["length"]["truncated"] == 0
        assert Path(done.result["adapter_dir"], "adapter_model.safetensors").is_file()
        assert done.result["init_adapter"] is None  # the first cycle starts from the base model

        add(db, traces("c", 20))
        second = wait_for(
            lambda: [j for j in queue.list_jobs(db) if j.id != first.id], 60, 0.1, "the second trigger"
        )[0]
        done2 = wait_for(lambda: _finished(db, second.id), 180, 0.2, "the second cycle")
    assert done2.state == "succeeded", done2.error
    assert (
        done2.payload["since"] == done.payload["until"] and done2.result["examples"] == 20
    )  # only what is new
    # Continuous training: the second cycle continues the first one's adapter with its optimizer state.
    assert done2.result["init_adapter"] == done.result["adapter_dir"]
    with db.read_session() as sess:
        row = sess.get(LoopState, "qa")
        kinds = list(sess.scalars(select(Event.kind).order_by(Event.id)))
        versions = list(sess.scalars(select(ModelVersion.id)))
    assert row.last_outcome["outcome"] == "succeeded" and row.last_outcome["job_id"] == second.id
    assert row.locked["lora.r"] == 4 and row.locked["base_model"] == str(tiny_model_dir)
    assert kinds.count("trigger.fired") == 2 and kinds.count("job.succeeded") == 2
    # The daily log tells the story of each cycle: its dataset, training progress, evaluation and verdict.
    log = "".join(f.read_text() for f in sorted((s.data_dir / "logs").glob("learnloop-*.log")))
    assert log.count("dataset.built") == 2 and "dataset 1 built, 22 examples" in log
    progress = [ln for ln in log.splitlines() if "job.progress" in ln]
    assert any(f"job {first.id}: step 4/4 (100%), loss " in ln for ln in progress), progress
    assert all("tokens/s" in ln for ln in progress) and len(progress) <= 2 * 4
    if registry_available():
        assert "evaluating v0001: 2/2 examples answered" in log, log
        assert f"cycle 1 (job {first.id}): gate " in log and "(passed)" in log
    if registry_available():
        assert len(versions) == 2 and done2.result["version_id"] in versions
        assert done.result["gate"]["passed"] and done.result["promoted"] is True, done.result.get("gate")
        assert row.head_version_id == done2.result["version_id"]
    else:
        assert versions == []


def test_length_guardrail_refuses_the_cycle_with_the_report(
    db: Database, settings: Settings, tiny_model_dir: Path
) -> None:
    s = loop_settings(
        settings, base_model=str(tiny_model_dir), train=tiny_train(max_length=16), max_truncated_share=0.1
    )
    add(
        db,
        [
            {**t, "messages": [t["messages"][0], {"role": "assistant", "content": "a long answer " * 20}]}
            for t in traces("l", 5)
        ],
    )
    _, job = loops.check_and_submit(db, s, s.loops[0], manual=True, actor="test")
    with running(s, db):
        done = wait_for(lambda: _finished(db, job.id), 120, 0.2, "the refusal")
    assert done.state == "failed" and done.attempts == 1  # not retried: the data would not change
    assert "5 of 5 examples (100%) exceed max_length 16 (allowed: 10%)" in done.error and "p95" in done.error
    assert done.result["length"]["truncated"] == 5 and "adapter_dir" not in done.result
    assert loops.status(db, s)[0]["last_outcome"]["outcome"] == "refused"
