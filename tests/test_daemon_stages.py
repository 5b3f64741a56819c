"""The cycle's stages after training, driven through the registry/evaluation contract.

The registry and evaluation stages are built on their own branch; here small stand-ins that follow
their contract (rows in model_versions, evaluations, aliases, alias_events) let the daemon's own
logic be checked: a crash between registering and recording registers nothing twice, a passing gate
promotes once, a frozen daemon does not promote, a failing gate does not advance the loop's head.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from daemon_support import add, loop_settings, tiny_train, traces, wait_for
from sqlalchemy import func, select
from test_daemon_worker import running

import learnloop.daemon.canary  # noqa: F401 - loaded with the real evaluation before the stand-ins replace it
from learnloop.config import Settings
from learnloop.daemon import loops, queue
from learnloop.store.db import Database
from learnloop.store.models import Alias, AliasEvent, Evaluation, Event, LoopState, ModelVersion


@pytest.fixture
def contract(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    state: dict[str, Any] = {"crash_after_register": 1, "diff": 0.2, "calls": []}

    def register_version(
        db: Database,
        settings: Settings,
        *,
        adapter_dir: Any,
        base_model: Any,
        parent_id: Any = None,
        dataset_id: Any = None,
        job_id: Any = None,
        **kw: Any,
    ) -> str:
        state["calls"].append(("register", job_id))
        with db.session() as s:
            n = (s.scalar(select(func.count()).select_from(ModelVersion)) or 0) + 1
            vid = f"v{n:04d}"
            s.add(
                ModelVersion(
                    id=vid,
                    base_model=str(base_model),
                    parent_id=parent_id,
                    job_id=job_id,
                    dataset_id=dataset_id,
                    loop=kw.get("loop"),
                    artifact_path=str(adapter_dir),
                )
            )
        if state["crash_after_register"]:
            state["crash_after_register"] -= 1
            raise RuntimeError("daemon died right after registering")  # the record on the job never happened
        return vid

    def promote(
        db: Database,
        settings: Settings,
        version_id: str,
        *,
        alias: str = "learnloop",
        actor: Any = None,
        reason: Any = None,
        evaluation_id: Any = None,
        force: bool = False,
    ) -> None:
        state["calls"].append(("promote", version_id))
        with db.session() as s:
            row = s.get(Alias, alias) or Alias(name=alias)
            s.add(
                AliasEvent(
                    alias=alias,
                    action="promote",
                    from_version=row.version_id,
                    to_version=version_id,
                    actor=actor,
                )
            )
            row.version_id = version_id
            s.add(row)

    def evaluate(
        db: Database,
        settings: Settings,
        *,
        candidate: str,
        baseline: str = "serving",
        scenario: Any = None,
        backend: Any = None,
        limit: Any = None,
        progress: Any = None,
    ) -> int:
        state["calls"].append(("evaluate", candidate))
        if progress is not None:  # the real stage reports each answered example
            progress(1, 1)
        with db.session() as s:
            ev = Evaluation(
                candidate_id=candidate,
                baseline_id="base",
                metrics={"overall": {"n": 10, "reward_diff": state["diff"]}},
                verdict="pending",
            )
            s.add(ev)
            s.flush()
            return ev.id

    class GatePolicy:
        def __init__(self, **kw: Any) -> None:
            self.margin = kw.get("margin", 0.0)

    class Verdict:
        def __init__(self, passed: bool) -> None:
            self.passed, self.verdict, self.reasons = (
                passed,
                "promote" if passed else "reject",
                ["stand-in gate"],
            )

    def gate(metrics: dict[str, Any], policy: GatePolicy) -> Verdict:
        return Verdict(metrics["overall"]["reward_diff"] > policy.margin)

    def policy_for(settings: Settings, loop: str | None = None) -> GatePolicy:
        own = next(x.gate for x in settings.loops if x.name == loop)  # [gate] under the loop's own keys
        return GatePolicy(**{**settings.gate.model_dump(), **own})

    for name, attrs in {
        "learnloop.registry": {"register_version": register_version, "promote": promote},
        "learnloop.evaluation": {
            "evaluate": evaluate,
            "gate": gate,
            "GatePolicy": GatePolicy,
            "policy_for": policy_for,
        },
    }.items():
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        for k, v in attrs.items():
            setattr(mod, k, v)
        monkeypatch.setitem(sys.modules, name, mod)
        monkeypatch.setattr(sys.modules["learnloop"], name.split(".")[1], mod, raising=False)
    return state


def _finished(db: Database, job_id: int) -> queue.JobInfo | None:
    job = queue.get_job(db, job_id)
    return job if job.state in ("succeeded", "failed", "cancelled") else None


def test_register_evaluate_gate_promote_once_each(
    sqlite_db: Database, settings: Settings, tiny_model_dir: Path, contract: dict[str, Any]
) -> None:
    db = sqlite_db
    s = loop_settings(
        settings, base_model=str(tiny_model_dir), train=tiny_train(max_steps=2), gate={"margin": 0.0}
    )
    add(db, traces("a", 8))
    _, job = loops.check_and_submit(db, s, s.loops[0], manual=True)
    with running(s, db):
        done = wait_for(lambda: _finished(db, job.id), 180, 0.2, "the cycle")
        assert done.state == "succeeded", done.error
        # Crashed once right after registering: the retry found that version instead of registering another.
        assert done.attempts == 2 and done.result["version_id"] == "v0001"
        assert done.result["gate"]["passed"] and done.result["promoted"] is True
        with db.read_session() as sess:
            assert sess.scalar(select(func.count()).select_from(ModelVersion)) == 1
            assert sess.get(LoopState, "qa").head_version_id == "v0001"
            assert sess.get(Alias, "learnloop").version_id == "v0001"

        # Frozen: the next cycle is registered and passes its gate, but is not promoted.
        queue.set_control(db, "daemon.frozen", True)
        add(db, traces("b", 8))
        _, job2 = loops.check_and_submit(db, s, s.loops[0], manual=True)
        done2 = wait_for(lambda: _finished(db, job2.id), 180, 0.2, "the frozen cycle")
        assert done2.state == "succeeded" and done2.result["promoted"] is False
        assert done2.result["init_adapter"] == done.result["adapter_dir"]  # continued the head

        # A failing gate: registered, not promoted, and the head stays where it was.
        queue.set_control(db, "daemon.frozen", False)
        contract["diff"] = -0.3
        add(db, traces("c", 8))
        _, job3 = loops.check_and_submit(db, s, s.loops[0], manual=True)
        done3 = wait_for(lambda: _finished(db, job3.id), 180, 0.2, "the rejected cycle")
    assert (
        done3.state == "succeeded"
        and done3.result["gate"]["passed"] is False
        and "promoted" not in done3.result
    )
    with db.read_session() as sess:
        assert sess.get(LoopState, "qa").head_version_id == "v0002"
        assert sess.get(Alias, "learnloop").version_id == "v0001"
        promotions = list(sess.scalars(select(AliasEvent.to_version)))
        held = list(sess.scalars(select(Event.message).where(Event.kind == "version.held")))
    assert promotions == ["v0001"]
    assert held and "daemon is frozen" in held[0]
    # The retry of the first cycle did not call register again: it found v0001 by its job id.
    assert [c for c in contract["calls"] if c[0] == "register"] == [
        ("register", job.id),
        ("register", job2.id),
        ("register", job3.id),
    ]


def test_the_cycle_gates_by_the_evaluation_stages_policy(sqlite_db: Database, settings: Settings) -> None:
    """The daemon's verdict is the one evaluate() stored; without one, [gate] under the loop's own keys
    (policy_for), never the loop's keys alone (which would drop [gate]'s stricter settings)."""
    from learnloop.daemon.cycle import Context, _gate

    data = settings.model_dump()
    data["gate"] = {**data["gate"], "min_examples": 50}  # [gate]: at least 50 held-out examples
    s = loop_settings(Settings.model_validate(data), gate={"margin": 0.0})  # the loop sets only its margin
    ctx = Context(db=sqlite_db, settings=s, owner="test", shutdown=None)  # type: ignore[arg-type]
    passing = {"overall": {"n": 40, "reward_diff": 0.2, "reward_diff_ci": [0.1, 0.3]}}
    with sqlite_db.session() as sess:
        sess.add(ModelVersion(id="v1", base_model="tiny", loop="qa"))
        sess.flush()
        fresh = Evaluation(candidate_id="v1", baseline_id="base", metrics=passing, verdict="pending")
        stored = Evaluation(
            candidate_id="v1",
            baseline_id="base",
            metrics=passing,
            verdict="reject",
            gate={"passed": False, "verdict": "reject", "reasons": ["by the stored policy"]},
        )
        sess.add_all([fresh, stored])
        sess.flush()
        fresh_id, stored_id = fresh.id, stored.id
    verdict = _gate(ctx, s.loops[0], fresh_id)
    assert verdict["passed"] is False and verdict["verdict"] == "inconclusive"  # [gate]'s 50 still holds
    assert "at least 50" in verdict["reasons"][0]
    stored_verdict = {"passed": False, "verdict": "reject", "reasons": ["by the stored policy"]}
    assert _gate(ctx, s.loops[0], stored_id) == stored_verdict
