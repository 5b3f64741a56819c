"""Loop triggers on both databases: thresholds, intervals, daily time, reward drop,
readiness reasons, locks."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from daemon_support import add, loop_settings, traces
from sqlalchemy import select, update

from learnloop.config import Settings
from learnloop.daemon import loops
from learnloop.errors import ConfigError, Conflict
from learnloop.store.db import Database
from learnloop.store.models import Alias, Evaluation, Event, Job, JobState, LoopState, ModelVersion, utcnow


def _settings(settings: Settings, tiny: Path, **loop: object) -> Settings:
    return loop_settings(settings, base_model=str(tiny), **loop)


def test_threshold_with_reasons_and_one_job_per_cycle(
    db: Database, settings: Settings, tiny_model_dir: Path
) -> None:
    s = _settings(settings, tiny_model_dir, triggers={"min_new_examples": 100, "check_interval": "30m"})
    loop = s.loops[0]
    add(db, traces("a", 62))
    add(db, traces("p", 30, source="production"))  # not this loop's source
    decision, job = loops.check_and_submit(db, s, loop)
    assert job is None and not decision.fire and decision.ready
    assert "62/100 new teacher traces (scenario qa)" in decision.reasons
    row = loops.status(db, s)[0]
    assert (
        row["state"] == "idle"
        and 1790 <= row["next_check_in_s"] <= 1800
        and "62/100 new teacher traces (scenario qa)" in row["reasons"]
    )
    assert loops.due(db, s) == []  # checked: not due again before check_interval

    add(db, traces("b", 38))
    decision, job = loops.check_and_submit(db, s, loop)
    assert (
        decision.fire
        and job is not None
        and job.payload["cycle"] == 1
        and job.idempotency_key == "loop:qa:cycle:1"
    )
    assert any(t.startswith("threshold: 100 >= 100") for t in decision.triggers)
    # Checking again while the cycle is queued queues nothing more;
    # a manual run is refused with the job named.
    _, again = loops.check_and_submit(db, s, loop)
    assert again is None
    with pytest.raises(Conflict, match=f"already has job {job.id}"):
        loops.check_and_submit(db, s, loop, manual=True)
    with db.read_session() as sess:
        kinds = list(sess.scalars(select(Event.kind).order_by(Event.id)))
        assert sess.scalar(select(Job.id).where(Job.id != job.id)) is None
    assert kinds.count("trigger.fired") == 1 and "trigger.skipped" in kinds
    assert loops.status(db, s)[0]["job"]["id"] == job.id


def test_next_cycle_counts_only_what_is_new(db: Database, settings: Settings, tiny_model_dir: Path) -> None:
    s = _settings(settings, tiny_model_dir, triggers={"min_new_examples": 10})
    add(db, traces("old", 12))
    _, job = loops.check_and_submit(db, s, s.loops[0])
    assert job is not None
    with db.session() as sess:  # the cycle finished
        sess.execute(
            update(Job).where(Job.id == job.id).values(state=JobState.succeeded, finished_at=utcnow())
        )
    add(db, traces("new", 4))
    decision = loops.check_loop(db, s, s.loops[0])
    assert (
        decision.new_examples == 4
        and not decision.fire
        and "4/10 new teacher traces (scenario qa)" in decision.reasons
    )
    _, manual = loops.check_and_submit(db, s, s.loops[0], manual=True, actor="test")
    assert manual.payload["cycle"] == 2 and manual.payload["since"] == job.payload["until"]


def test_max_interval_and_daily_time(db: Database, settings: Settings, tiny_model_dir: Path) -> None:
    s = _settings(
        settings,
        tiny_model_dir,
        triggers={"min_new_examples": 100, "max_interval": "6h", "daily_at": "03:00"},
    )
    loop = s.loops[0]
    add(db, traces("a", 3))
    now = dt.datetime(2030, 1, 2, 12, 0, tzinfo=dt.UTC)
    never = loops.check_loop(db, s, loop, now=now, last_cycle_at=None)
    assert never.fire and any("max_interval: never trained" in t for t in never.triggers)
    recent = loops.check_loop(db, s, loop, now=now, last_cycle_at=now - dt.timedelta(hours=2))
    assert not recent.fire  # 2 h ago, and after today's 03:00
    daily = loops.check_loop(db, s, loop, now=now, last_cycle_at=now - dt.timedelta(hours=10))
    assert daily.fire and "daily at 03:00 UTC" in daily.triggers
    before_slot = loops.check_loop(
        db, s, loop, now=now.replace(hour=2), last_cycle_at=now.replace(hour=2) - dt.timedelta(hours=3)
    )
    assert not before_slot.fire


def test_readiness_checks_block_with_reasons(db: Database, settings: Settings, tiny_model_dir: Path) -> None:
    s = _settings(
        settings,
        tiny_model_dir,
        triggers={"min_new_examples": 5, "min_holdout": 5, "min_free_disk_mb": 10**9},
    )
    add(db, traces("a", 6) + [{**t, "holdout": True} for t in traces("h", 2)])
    d = loops.check_loop(db, s, s.loops[0])
    assert d.triggers and not d.ready and not d.fire
    failed = {c.name: c.reason for c in d.checks if not c.ok}
    # min_holdout 5 is below the default gate's 30: the loop waits for what the gate needs.
    assert failed["holdout"] == "2/30 held-out examples (the gate decides on at least 30)"
    assert "MiB free in the data dir (floor 1000000000)" in failed["disk"]
    missing = loop_settings(settings, base_model=str(tiny_model_dir / "nope"))
    d = loops.check_loop(db, missing, missing.loops[0])
    assert not d.ready and any(c.name == "base_model" and not c.ok for c in d.checks)


def test_grpo_needs_groups_with_differing_rewards(
    db: Database, settings: Settings, tiny_model_dir: Path
) -> None:
    s = _settings(settings, tiny_model_dir, algorithm="grpo", triggers={"min_new_examples": 1})
    same = [
        {
            "id": f"g{i}",
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": f"a{i}"}],
            "source": "teacher",
            "scenario": "qa",
            "group_id": "G",
            "reward": 0.5,
        }
        for i in range(3)
    ]
    add(db, same)
    d = loops.check_loop(db, s, s.loops[0])
    assert d.new_examples == 1 and not d.ready
    assert "0/1 groups have rewards that differ (GRPO learns nothing from equal ones)" in d.reasons
    add(
        db,
        [
            {
                "id": "g9",
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "better"}],
                "source": "teacher",
                "scenario": "qa",
                "group_id": "G",
                "reward": 0.9,
            }
        ],
    )
    d = loops.check_loop(db, s, s.loops[0])
    assert d.ready and d.fire and "1 groups with at least 2 members" in d.reasons


def test_reward_drop_of_served_traffic(db: Database, settings: Settings, tiny_model_dir: Path) -> None:
    s = _settings(
        settings,
        tiny_model_dir,
        triggers={"min_new_examples": 1000, "reward_drop": 0.2, "reward_min_samples": 5},
    )
    with db.session() as sess:
        sess.add(ModelVersion(id="v0001", base_model=str(tiny_model_dir), loop="qa"))
        sess.flush()
        sess.add(
            Evaluation(
                candidate_id="v0001",
                metrics={"overall": {"n": 30, "reward_candidate": 0.8}},
                verdict="promote",
            )
        )
        sess.add(Alias(name="learnloop", version_id="v0001"))
    add(db, traces("t", 3))
    served = [
        {
            "id": f"s{i}",
            "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "meh"}],
            "source": "served",
            "model_version": "v0001",
            "reward": 0.7,
        }
        for i in range(6)
    ]
    add(db, served)
    assert not loops.check_loop(db, s, s.loops[0]).fire  # 0.7 vs 0.8: within the margin
    add(db, [{**t, "id": t["id"] + "b", "reward": 0.1} for t in served])
    d = loops.check_loop(db, s, s.loops[0])
    assert d.fire and any(
        t.startswith("reward drop: served v0001 averages 0.400 over 12 trajectories") for t in d.triggers
    )


def test_config_lock_refuses_a_changed_key(db: Database, settings: Settings, tiny_model_dir: Path) -> None:
    s = _settings(settings, tiny_model_dir, train={"lora": {"r": 4, "alpha": 8}, "max_length": 64})
    loop = s.loops[0]
    loops.check_lock(db, s, loop)  # nothing locked before the first version
    loops.ensure_row(db, "qa")
    loops.record_cycle(db, s, loop, 1, {"outcome": "succeeded"}, head_version=None, advanced=True)
    with db.read_session() as sess:
        locked = sess.get(LoopState, "qa").locked
    assert (
        locked["lora.r"] == 4 and locked["max_length"] == 64 and locked["base_model"] == str(tiny_model_dir)
    )
    assert locked["chat_template"]  # the tiny model ships a ChatML template
    loops.check_lock(db, s, loop)
    changed = _settings(settings, tiny_model_dir, train={"lora": {"r": 8, "alpha": 8}, "max_length": 64})
    with pytest.raises(ConfigError) as err:
        loops.check_and_submit(db, changed, changed.loops[0], manual=True)
    msg = str(err.value)
    assert (
        "lora.r is locked to 4" in msg
        and "configured now: 8" in msg
        and "new [[loops]] entry with another name" in msg
    )
    assert loops.status(db, changed)[0]["state"] == "refused"
    other = loop_settings(
        settings, name="qa2", base_model=str(tiny_model_dir), train={"lora": {"r": 8, "alpha": 8}}
    )
    loops.check_lock(db, other, other.loops[0])  # a new loop starts afresh


def test_loop_config_is_validated_up_front(settings: Settings) -> None:
    with pytest.raises(Exception, match="train.output_dir is set by the loop itself"):
        loop_settings(settings, train={"output_dir": "x"})
    with pytest.raises(Exception, match="learning_rate"):
        loop_settings(settings, train={"learning_rate": -1})
    with pytest.raises(Exception, match="not a time of day"):
        loop_settings(settings, triggers={"daily_at": "25:00"})
    with pytest.raises(Exception, match="used twice"):
        Settings.model_validate({**settings.model_dump(), "loops": [{"name": "a"}, {"name": "a"}]})


def test_failed_cycles_back_off_before_the_loop_fires_again(
    db: Database, settings: Settings, tiny_model_dir: Path
) -> None:
    s = _settings(settings, tiny_model_dir, triggers={"min_new_examples": 5})
    s = s.model_copy(
        update={"daemon": s.daemon.model_copy(update={"retry_backoff": 60.0, "retry_backoff_max": 100.0})}
    )
    add(db, traces("a", 6))
    _, job = loops.check_and_submit(db, s, s.loops[0])
    assert job is not None
    failed_at = utcnow()
    with db.session() as sess:  # the cycle failed (say its guardrail refused the data)
        sess.execute(update(Job).where(Job.id == job.id).values(state=JobState.failed, finished_at=failed_at))
    waiting = loops.check_loop(db, s, s.loops[0], now=failed_at + dt.timedelta(seconds=30))
    assert not waiting.fire and any(
        "1 cycle(s) failed in a row; the next may start at" in r for r in waiting.reasons
    )
    assert loops.check_loop(db, s, s.loops[0], now=failed_at + dt.timedelta(seconds=61)).fire

    _, second = loops.check_and_submit(db, s, s.loops[0], now=failed_at + dt.timedelta(seconds=61))
    assert second is not None
    with db.session() as sess:
        sess.execute(
            update(Job)
            .where(Job.id == second.id)
            .values(state=JobState.failed, finished_at=failed_at + dt.timedelta(seconds=62))
        )
    # Two failures in a row: the wait doubles, up to retry_backoff_max.
    assert not loops.check_loop(db, s, s.loops[0], now=failed_at + dt.timedelta(seconds=62 + 90)).fire
    assert loops.check_loop(db, s, s.loops[0], now=failed_at + dt.timedelta(seconds=62 + 101)).fire
