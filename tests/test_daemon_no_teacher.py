"""Loops that learn without a teacher, on the tiny model: on-policy GRPO and RFT over served prompts
scored by the app's registered ``@reward`` functions, KTO from unpaired good and bad answers. The
daemon counts prompts, builds the right dataset kind, fills the rollout section from the loop, trains,
registers and gates; a cycle too small to matter, or whose gate could not decide, waits with a reason;
a loop whose reward never varies says so and backs off; a stop or a kill mid-rollout resumes at the
step boundary."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_support import add, loop_settings, tiny_train, wait_for
from sqlalchemy import select
from test_daemon_worker import running

from learnloop.config import Settings
from learnloop.daemon import loops, queue
from learnloop.daemon.cycle import Context, _train_config, registry_available
from learnloop.store.db import Database
from learnloop.store.models import Event, Job, ModelVersion, TrainingMetric, utcnow

REWARDS_FILE = str(Path(__file__).with_name("rollout_rewards.py"))
# A gate the tiny random model can pass: every stage must run, whatever a few steps teach it.
GATE = {
    "min_examples": 2,
    "margin": -10.0,
    "max_p95_latency_ratio": 1000.0,
    "max_json_validity_drop": 1.0,
    "max_scenario_regression": 10.0,
    "max_refusal_increase": 1.0,
}
ROLLOUT = {"num_generations": 2, "max_new_tokens": 6, "temperature": 1.0}


@pytest.fixture(autouse=True)
def _own_reward_registry() -> Iterator[None]:
    """The in-process daemon's evaluations import the test rewards into this process's registry, where
    every later evaluation would apply them too: each test leaves the registry as it found it."""
    from learnloop.scoring.registry import registered, unregister

    names = {f.name for f in registered()}
    modules = set(sys.modules)
    yield
    for f in registered():
        if f.name not in names:
            unregister(f.name)
    for name in set(sys.modules) - modules:
        if name.startswith("learnloop_user_"):
            del sys.modules[name]


def _settings(settings: Settings, tiny: Path, **loop: Any) -> Settings:
    s = loop_settings(settings, base_model=str(tiny), **loop)
    return s.model_copy(
        update={
            "scoring": s.scoring.model_copy(update={"reward_modules": [REWARDS_FILE]}),
            "evaluation": s.evaluation.model_copy(update={"max_new_tokens": 8}),
        }
    )


def _served(prefix: str, n: int, *, scenario: str = "qa", **kw: Any) -> list[dict[str, Any]]:
    """Served traffic as an app sends it: one answer per request (n = 1), no teacher."""
    return [
        {
            "id": f"{prefix}-{i}",
            "messages": [
                {"role": "user", "content": f"order {prefix} {i}: {i} apples"},
                {"role": "assistant", "content": f"{{'apples': {i + 1}}}"},
            ],
            "source": "served",
            "scenario": scenario,
            **kw,
        }
        for i in range(n)
    ]


def _finished(db: Database, job_id: int) -> queue.JobInfo | None:
    job = queue.get_job(db, job_id)
    return job if job.state in ("succeeded", "failed", "cancelled") else None


def _job_config(job: queue.JobInfo, settings: Settings) -> dict[str, Any]:
    from learnloop.paths import data_dir

    return json.loads((data_dir(settings.data_dir).job_checkpoints(job.id) / "job-config.json").read_text())


LOOPS: dict[str, dict[str, Any]] = {
    "grpo-on-policy": {
        "rewards": ["rt_lower"],
        "train": tiny_train(max_steps=2, batch_size=2, rollout=ROLLOUT),
    },
    # The tiny model's answers score about 0.5 by rt_lower: a bar of 0.3 keeps some of them.
    "rft": {
        "rewards": ["rt_lower"],
        "train": tiny_train(max_steps=2, batch_size=2, rollout=ROLLOUT, rft={"min_reward": 0.3}),
    },
    "kto": {"train": tiny_train(max_steps=2, batch_size=2)},
}


@pytest.mark.parametrize("algorithm", list(LOOPS))
def test_a_loop_learns_without_a_teacher_end_to_end(
    db: Database, settings: Settings, tiny_model_dir: Path, algorithm: str
) -> None:
    s = _settings(
        settings,
        tiny_model_dir,
        name="nt",
        algorithm=algorithm,
        sources=["served"],
        gate=GATE,
        eval_limit=2,
        # min_holdout unset: the loop waits for the gate's own minimum (2 here).
        triggers={"min_new_examples": 6, "check_interval": 0.5, "min_holdout": None},
        **LOOPS[algorithm],
    )
    loop = s.loops[0]
    if algorithm == "kto":
        # Unpaired signals: some answers rated good, some bad (thumbs, success, ratings all land here).
        rows = [{**r, "reward": 1.0 if i % 2 else -1.0} for i, r in enumerate(_served("a", 6))]
    else:
        rows = _served("a", 6)
    add(db, rows)
    loops.ensure_row(db, loop.name)
    d = loops.check_loop(db, s, loop)
    assert not d.ready and "0/2 held-out examples (the gate decides on at least 2)" in d.reasons
    add(db, [{**r, "holdout": True} for r in _served("h", 2)])
    d = loops.check_loop(db, s, loop)
    unit = "labelled answers" if algorithm == "kto" else "prompts"
    assert d.fire and d.new_examples == 6, d.reasons
    assert f"6/6 new served {unit} (scenario qa)" in d.reasons
    assert d.plan["steps"] == 2 and d.plan["steps_from"] == "max_steps"
    with running(s, db):
        job = wait_for(lambda: queue.list_jobs(db), 60, 0.1, "the trigger")[0]
        done = wait_for(lambda: _finished(db, job.id), 400, 0.2, "the cycle")
    assert done.state == "succeeded", (done.error or "") + (done.output_tail or "")
    assert done.result["examples"] == 6 and done.result["step"] == 2
    cfg = _job_config(done, s)
    assert cfg["algorithm"] == loop.train_algorithm and cfg["max_steps"] == 2
    if algorithm == "kto":
        assert cfg["rollout"]["rewards"] == []
    else:
        # The rollout section comes from the loop: its rewards, the [scoring] settings, never a key.
        assert cfg["rollout"]["rewards"] == ["rt_lower"] and cfg["rollout"]["judge"] is False
        assert cfg["rollout"]["scoring"]["reward_modules"] == [REWARDS_FILE]
        assert cfg["rollout"]["scoring"]["judge_api_key"] is None
        assert "reward_mean" in done.result["train_metrics"]
    dataset = [json.loads(x) for x in Path(done.result["dataset_path"]).read_text().splitlines()]
    if algorithm == "kto":
        assert sorted(r["label"] for r in dataset) == [False] * 3 + [True] * 3
    else:
        assert len(dataset) == 6 and all("prompt" in r and "messages" not in r for r in dataset)
    if registry_available():
        with db.read_session() as sess:
            algo = sess.scalar(select(ModelVersion.algorithm).where(ModelVersion.job_id == job.id))
        assert algo == algorithm and done.result["gate"]["verdict"] is not None, done.result.get("gate")
    assert loops.status(db, s)[0]["last_outcome"]["outcome"] == "succeeded"


def test_a_rollout_loop_needs_rewards_and_keeps_them_out_of_train() -> None:
    from learnloop.config.loops import LoopConfig

    with pytest.raises(ValueError, match="name rewards = \\[...\\]"):
        LoopConfig(name="x", algorithm="grpo-on-policy")
    with pytest.raises(ValueError, match="rewards and judge score rollouts"):
        LoopConfig(name="x", algorithm="sft", rewards=["rt_lower"])
    with pytest.raises(ValueError, match="set by the loop"):
        LoopConfig(name="x", algorithm="rft", rewards=["a"], train={"rollout": {"rewards": ["b"]}})
    judged = LoopConfig(name="x", algorithm="rft", judge=True, train={"rollout": {"num_generations": 3}})
    assert judged.dataset_kind == "prompts" and judged.train_algorithm == "rft"


def test_the_judge_key_stays_in_the_environment(
    sqlite_db: Database, settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    s = _settings(settings, tiny_model_dir, algorithm="grpo-on-policy", judge=True, train=tiny_train())
    s = s.model_copy(
        update={
            "scoring": s.scoring.model_copy(
                update={"judge_base_url": "http://127.0.0.1:9/v1", "judge_model": "learnloop"}
            )
        }
    )
    from pydantic import SecretStr

    s.scoring.judge_api_key = SecretStr("sk-never-written")
    job = queue.JobInfo.__new__(queue.JobInfo)
    job.id = 7
    ctx = Context(sqlite_db, s, "test", None)  # type: ignore[arg-type]
    config = _train_config(ctx, job, s.loops[0], str(tiny_model_dir), tmp_path / "d.jsonl", None)
    text = config.model_dump_json()
    assert config.rollout.judge and config.rollout.scoring.judge_model == "learnloop"
    assert "sk-never-written" not in text and config.algorithm == "grpo" and config.online


def test_a_cycle_below_the_step_floor_waits_and_status_says_what_it_would_do(
    db: Database, settings: Settings, tiny_model_dir: Path
) -> None:
    s = _settings(
        settings,
        tiny_model_dir,
        algorithm="grpo-on-policy",
        sources=["served"],
        rewards=["rt_lower"],
        min_steps=None,  # the algorithm's floor (16 for GRPO)
        train={"batch_size": 4},
        triggers={"min_new_examples": 5},
    )
    loop = s.loops[0]
    loops.ensure_row(db, loop.name)
    add(db, _served("a", 12))
    loops.check_and_submit(db, s, loop)
    assert queue.list_jobs(db) == []  # the threshold fired, but 12 prompts make 3 steps
    row = loops.status(db, s)[0]
    why = next(r for r in row["reasons"] if "optimizer step" in r)
    assert why.startswith(
        "12 prompts make 3 optimizer step(s); grpo needs at least 16 (about 64 prompts at 4"
    )
    assert row["next_cycle"]["steps"] == 3 and row["next_cycle"]["algorithm"] == "grpo-on-policy"
    add(db, _served("b", 52))
    d = loops.check_loop(db, s, loop)
    assert d.fire and d.plan["steps"] == 16, d.reasons
    assert any(
        r.startswith("next cycle: grpo-on-policy (grpo over rollouts) on 64 prompts") for r in d.reasons
    )


def test_the_cli_status_says_what_the_next_cycle_would_do(
    sqlite_db: Database, settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from learnloop.cli.main import cli

    cfg = tmp_path / "learnloop.toml"
    cfg.write_text(
        f"""database_url = "{sqlite_db.url}"
data_dir = "{tmp_path / "data"}"
[scoring]
reward_modules = ["{REWARDS_FILE}"]
[[loops]]
name = "nt"
algorithm = "rft"
sources = ["served"]
rewards = ["rt_lower"]
base_model = "{tiny_model_dir}"
[loops.triggers]
min_new_examples = 4
"""
    )
    add(sqlite_db, _served("a", 9))
    env = {"LEARNLOOP_CONFIG": str(cfg)}
    out = CliRunner().invoke(cli, ["loops", "status", "--check"], env=env)
    assert out.exit_code == 0, out.output
    assert "next cycle: rft on 9 prompts: 3 optimizer steps (4 per step, floor 8)" in out.output
    assert "9 prompts make 3 optimizer step(s); rft needs at least 8" in out.output
    assert "0/30 held-out examples (the gate decides on at least 30)" in out.output


def test_readiness_and_the_gate_agree_on_held_out_examples(
    db: Database, settings: Settings, tiny_model_dir: Path
) -> None:
    # The case: min_holdout 8 let a cycle start that the gate (30) could only call inconclusive.
    s = _settings(settings, tiny_model_dir, triggers={"min_new_examples": 1, "min_holdout": 8})
    add(db, [{**r, "source": "teacher"} for r in _served("a", 3)])
    add(db, [{**r, "source": "teacher", "holdout": True} for r in _served("h", 27)])
    d = loops.check_loop(db, s, s.loops[0])
    assert not d.ready and "27/30 held-out examples (the gate decides on at least 30)" in d.reasons
    add(db, [{**r, "source": "teacher", "holdout": True} for r in _served("i", 3)])
    assert loops.check_loop(db, s, s.loops[0]).fire
    # An evaluation capped below the gate's minimum could never decide: said, not started.
    capped = _settings(
        settings, tiny_model_dir, eval_limit=10, triggers={"min_new_examples": 1, "min_holdout": 8}
    )
    d = loops.check_loop(db, capped, capped.loops[0])
    assert not d.ready and any("eval_limit 10 is below the gate's min_examples 30" in r for r in d.reasons)


# ------------------------------------------------------------------------------------------ backoff


def _cycle(db: Database, s: Settings, at: dt.datetime, gate: dict[str, Any] | None) -> int:
    """A finished cycle of the loop whose gate said ``gate`` (what the daemon records)."""
    job = loops.submit_cycle(db, s, s.loops[0], now=at, reason="test")
    claimed = queue.claim(db, "t", lease_seconds=60)
    assert claimed is not None and claimed.id == job.id
    queue.update_result(db, job.id, "t", gate=gate, examples=5)
    queue.succeed(db, job.id, "t", {"head": bool(gate and gate["passed"])})
    with db.session() as sess:
        sess.get(Job, job.id).finished_at = at
    return job.id


def test_quiet_cycles_back_off_until_a_new_scenario_or_a_person_wakes_the_loop(
    db: Database, settings: Settings, tiny_model_dir: Path
) -> None:
    s = _settings(
        settings,
        tiny_model_dir,
        scenario=None,
        sources=["served"],
        triggers={"min_new_examples": 1, "backoff": "1h", "backoff_max": "3h"},
    )
    loop = s.loops[0]
    loops.ensure_row(db, loop.name)
    t0 = utcnow() - dt.timedelta(hours=10)

    def rows(prefix: str, at: dt.timedelta, scenario: str = "qa") -> list[dict[str, Any]]:
        return _served(prefix, 3, scenario=scenario, reward=1.0, created_at=(t0 + at).isoformat())

    no = {"passed": False, "verdict": "reject", "reasons": ["the lower bound does not clear +0.0000"]}
    add(db, rows("old", -dt.timedelta(hours=1)))
    _cycle(db, s, t0, no)
    add(db, rows("a", dt.timedelta(minutes=10)))
    d = loops.check_loop(db, s, loop, now=t0 + dt.timedelta(minutes=30))
    assert not d.ready and d.triggers, d.reasons
    why = next(r for r in d.reasons if r.startswith("backing off"))
    assert (
        "1 cycle(s) in a row improved nothing (gate rejected the candidate)" in why and "wait 3600 s" in why
    )
    assert d.backoff["wait_s"] == 3600
    assert loops.check_loop(db, s, loop, now=t0 + dt.timedelta(minutes=61)).fire
    # Two quiet cycles in a row: the wait doubles; three: capped at backoff_max.
    _cycle(db, s, t0 + dt.timedelta(hours=1), no)
    _cycle(db, s, t0 + dt.timedelta(hours=2), no)
    add(db, rows("b", dt.timedelta(hours=2, minutes=10)))
    later = t0 + dt.timedelta(hours=2, minutes=30)
    d = loops.check_loop(db, s, loop, now=later)
    assert not d.ready and d.backoff["quiet_cycles"] == 3 and d.backoff["wait_s"] == 3 * 3600, d.reasons
    # A scenario the traffic never had before wakes it.
    add(db, rows("c", dt.timedelta(hours=2, minutes=20), scenario="refunds"))
    d = loops.check_loop(db, s, loop, now=later)
    assert d.ready and d.backoff["woken_by"] == "new scenario(s) in the traffic: refunds", d.reasons
    # An inconclusive gate (nothing to decide on) is not a quiet cycle; a promotion resets the count.
    _cycle(db, s, t0 + dt.timedelta(hours=2, minutes=40), {"passed": False, "verdict": "inconclusive"})
    add(db, rows("c2", dt.timedelta(hours=2, minutes=42)))
    d = loops.check_loop(db, s, loop, now=t0 + dt.timedelta(hours=2, minutes=45))
    assert d.new_examples == 3 and d.backoff is None and d.fire, d.reasons
    _cycle(db, s, t0 + dt.timedelta(hours=3), {"passed": True, "verdict": "promote", "reasons": []})
    add(db, rows("d", dt.timedelta(hours=3, seconds=30)))
    d = loops.check_loop(db, s, loop, now=t0 + dt.timedelta(hours=3, minutes=1))
    assert d.backoff is None and d.fire, d.reasons
    # A person always can: `loops run` queues a cycle whatever the checks say.
    _cycle(db, s, t0 + dt.timedelta(hours=4), no)
    _, job = loops.check_and_submit(db, s, loop, manual=True, actor="cli")
    assert job is not None


def test_a_loop_whose_reward_never_varies_says_so_and_backs_off(
    db: Database, settings: Settings, tiny_model_dir: Path
) -> None:
    s = _settings(
        settings,
        tiny_model_dir,
        name="flat",
        algorithm="grpo-on-policy",
        sources=["served"],
        rewards=["rt_constant"],
        train=tiny_train(max_steps=4, batch_size=2, rollout={**ROLLOUT, "max_flat_groups": 2}),
        triggers={"min_new_examples": 1},
    )
    loop = s.loops[0]
    add(db, _served("a", 4))
    _, job = loops.check_and_submit(db, s, loop, manual=True, actor="test")
    with running(s, db):
        done = wait_for(lambda: _finished(db, job.id), 300, 0.2, "the cycle")
    assert done.state == "failed" and done.attempts == 1  # not retried: the same prompts tie again
    assert done.error.startswith("Nothing to learn: in the first 2 prompts"), done.error
    assert "rewards seen: 0.5" in done.error and "adapter_dir" not in done.result
    status = loops.status(db, s)[0]
    assert (
        status["last_outcome"]["outcome"] == "no_signal"
        and "Nothing to learn" in status["last_outcome"]["reason"]
    )
    add(db, _served("b", 4))
    d = loops.check_loop(db, s, loop)
    assert not d.fire and d.triggers
    assert any(
        r.startswith("backing off: 1 cycle(s) in a row improved nothing (no learning signal)")
        for r in d.reasons
    )
    # Not counted as a crash: the failure backoff stays out of it.
    assert not any(c.name == "after_failure" for c in d.checks)
    with db.read_session() as sess:
        kinds = list(sess.scalars(select(Event.kind).where(Event.job_id == job.id)))
    assert "cycle.no_signal" in kinds


# ---------------------------------------------------------------------------------- interruptions


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_kill_or_stop_mid_rollout_resumes_the_cycle_at_the_step_boundary(
    sqlite_db: Database,
    settings: Settings,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """Step 3's rollout (2 prompts x 2 samples: reward calls 9..12) is held inside the reward function.
    A killed training process loses step 3 and the retry resumes from checkpoint 2; a stopped daemon
    finishes step 3, checkpoints it, and the next daemon resumes from there."""
    from learnloop.training.checkpoint import latest_checkpoint
    from learnloop.training.control import read_control

    db = sqlite_db
    gate = tmp_path / "gate"
    gate.mkdir()
    monkeypatch.setenv("LEARNLOOP_TEST_GATE", str(gate))
    monkeypatch.setenv("LEARNLOOP_TEST_GATE_AT", "10")
    s = _settings(
        settings,
        tiny_model_dir,
        algorithm="grpo-on-policy",
        sources=["served"],
        rewards=["rt_lower_gated"],
        train=tiny_train(max_steps=4, batch_size=2, checkpoint_every=2, rollout=ROLLOUT),
    )
    add(db, _served("a", 4))
    _, job = loops.check_and_submit(db, s, s.loops[0], manual=True, actor="test")
    out_dir = Path(s.data_dir) / "checkpoints" / f"job-{job.id}"
    with running(s, db) as daemon:
        wait_for(lambda: (gate / "waiting").exists(), 300, 0.1, "the rollout to reach the gate")
        assert latest_checkpoint(out_dir).step == 2
        if how == "kill":
            os.kill(int((gate / "waiting").read_text()), signal.SIGKILL)
            # The retry starts a new process: its own count of calls never reaches 10 again.
            done = wait_for(lambda: _finished(db, job.id), 300, 0.2, "the retried cycle")
        else:
            daemon.stop(timeout=0)  # the daemon shuts down: its supervisor asks the run to stop
            wait_for(lambda: read_control(out_dir) == "stop", 60, 0.05, "the stop request")
            (gate / "go").write_text("")  # step 3 finishes, checkpoints, and the run exits
    if how == "stop":
        stopped = queue.get_job(db, job.id)
        assert stopped.state == "queued" and latest_checkpoint(out_dir).step == 3
        with running(s, db):
            done = wait_for(lambda: _finished(db, job.id), 300, 0.2, "the resumed cycle")
    assert done.state == "succeeded", (done.error or "") + (done.output_tail or "")
    with db.read_session() as sess:
        steps = list(
            sess.scalars(
                select(TrainingMetric.step)
                .where(TrainingMetric.job_id == job.id)
                .order_by(TrainingMetric.step)
            )
        )
    assert steps == [1, 2, 3, 4]
    assert done.attempts == (2 if how == "kill" else 1)
    lines = [json.loads(x)["step"] for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    # Each step trained once (a redone step's rows are trimmed): the resume started at the checkpoint.
    assert lines == [1, 2, 3, 4]


def test_the_readme_loops_without_a_teacher_are_valid() -> None:
    """The README's loop examples (seed 004's "DPO after 80 pairs" among them) are real config."""
    import re
    import tomllib

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Loops without a teacher") :]
    block = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    s = Settings.model_validate(tomllib.loads(block))
    by_name = {lp.name: lp for lp in s.loops}
    assert (
        by_name["orders-grpo"].dataset_kind == "prompts" and by_name["orders-grpo"].train_algorithm == "grpo"
    )
    assert by_name["orders-rft"].rewards == ["order_json"]
    assert by_name["orders-kto"].dataset_kind == "kto"
    assert by_name["orders-dpo"].triggers.min_new_examples == 80


def test_the_job_schema_states_what_rollout_scoring_accepts(settings: Settings) -> None:
    """POST /v1/jobs takes a TrainConfig: its rollout.scoring is [scoring] less the key, and the
    OpenAPI schema says so (a free-form object there let Schemathesis send {"": {}} and get 422)."""
    from pydantic import ValidationError

    from learnloop.api.app import create_app
    from learnloop.config.training import TrainConfig

    schemas = create_app(settings).openapi()["components"]["schemas"]
    scoring = schemas["RolloutScoring"]
    assert schemas["RolloutConfig"]["properties"]["scoring"]["$ref"].endswith("/RolloutScoring")
    assert (
        scoring["additionalProperties"] is False and scoring["properties"]["judge_api_key"]["type"] == "null"
    )
    assert "reward_modules" in scoring["properties"] and "combine" in scoring["properties"]
    base = {"algorithm": "grpo", "base_model": "m", "dataset": "d.jsonl", "output_dir": "o"}
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        TrainConfig.model_validate({**base, "rollout": {"scoring": {"": {"": {}}}}})
    with pytest.raises(ValidationError, match="LEARNLOOP_SCORING__JUDGE_API_KEY"):
        TrainConfig.model_validate({**base, "rollout": {"scoring": {"judge_api_key": "sk-1"}}})
    ok = TrainConfig.model_validate(
        {**base, "rollout": {"rewards": ["x"], "scoring": {"reward_modules": ["m"]}}}
    )
    assert TrainConfig.model_validate_json(ok.model_dump_json()).rollout.scoring.reward_modules == ["m"]


def test_a_loop_at_its_ceiling_waits_until_the_live_reward_drops(
    db: Database, settings: Settings, tiny_model_dir: Path
) -> None:
    """The issue's case: v0001 served 48/48 exact and the loop started cycle 2 at once. At the ceiling
    it waits; when the served version's live reward falls off it (the reward_drop trigger), it learns."""
    from learnloop.store.models import Alias, Evaluation

    s = _settings(
        settings,
        tiny_model_dir,
        sources=["teacher"],
        triggers={"min_new_examples": 3, "reward_drop": 0.2, "reward_min_samples": 5, "backoff": "1h"},
    )
    with db.session() as sess:
        sess.add(ModelVersion(id="v0001", base_model=str(tiny_model_dir), loop="qa"))
        sess.flush()
        sess.add(
            Evaluation(
                candidate_id="v0001",
                metrics={"overall": {"n": 48, "reward_candidate": 1.0}},
                verdict="promote",
            )
        )
        sess.add(Alias(name="learnloop", version_id="v0001"))
    loops.ensure_row(db, "qa")
    add(db, [{**r, "source": "teacher", "reward": 1.0} for r in _served("t", 4)])
    served = [
        {**r, "model_version": "v0001", "reward": 1.0, "scenario": "qa"}
        for r in _served("s", 6, scenario="qa")
    ]
    add(db, served)
    d = loops.check_loop(db, s, s.loops[0])
    assert d.triggers and not d.ready
    why = next(r for r in d.reasons if r.startswith("backing off"))
    assert "served v0001 sits at its evaluated ceiling (1.000 >= 0.99; live 1.000 over 6)" in why
    assert d.backoff["ceiling"] and d.backoff["until"] is None  # no cycle yet: it waits while at the top
    add(db, [{**r, "id": r["id"] + "b", "reward": 0.2} for r in served])
    d = loops.check_loop(db, s, s.loops[0])
    assert d.fire and d.backoff is None, d.reasons  # 0.6 live: off the ceiling, and a reward drop fires
    assert any(t.startswith("reward drop: served v0001 averages 0.600") for t in d.triggers)
