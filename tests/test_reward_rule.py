"""One reward rule everywhere: the evaluation, the gate, `eval compare`, the quality view, the
reward-drop trigger and the statistics all give an answer the reward scoring's explicit-first rule
gives it, so generic heuristics never outvote the app's own verifier."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_support import add, loop_settings, traces
from registry_support import ScriptedBackend, add_holdout, make_adapter, settings_for

from learnloop.config import CombineSettings, GatePolicy, Settings
from learnloop.daemon import loops
from learnloop.evaluation import compare_evaluations, evaluate, get_evaluation
from learnloop.registry import register_version
from learnloop.scoring import combined_rewards, reward_stats
from learnloop.scoring.registry import register, registered, unregister
from learnloop.scoring.view import TrajectoryView
from learnloop.store import Database, ingest, parse_batch
from learnloop.store.models import Alias, Evaluation, ModelVersion, utcnow
from learnloop.watch import queries

# The user's task: extract an order as JSON. The verifier is theirs; length and no_refusal are built-ins.
GOOD = '{"order": "A-1", "note": "' + "x" * 30 + '"}'  # what the verifier wants, but long
CHATTY = "order ships soon."  # short and polite, mentions the order: partial credit only
POLITE = "Sure, happy to help."  # short and polite, no order at all


def order_json(t: TrajectoryView) -> float | None:
    """1 for a JSON object with an order, 0.5 for prose that mentions one, 0 otherwise."""
    text = t.completion.strip()
    try:
        data = json.loads(text)
    except ValueError:
        return 0.5 if "order" in text else 0.0
    return 1.0 if isinstance(data, dict) and "order" in data else 0.0


@pytest.fixture
def verifier() -> Iterator[None]:
    # The demo's own order_json may be registered already (its module imported by another test):
    # put it back afterwards, since a module imported once never registers its rewards again.
    before = {f.name: f for f in registered()}.get("order_json")
    register(order_json, name="order_json", replace=True)
    try:
        yield
    finally:
        unregister("order_json")
        if before is not None:
            register(before.fn, name=before.name, version=before.version, replace=True)


@pytest.fixture
def s(settings: Settings, tiny_model_dir: Path) -> Settings:
    return settings_for(
        settings,
        tiny_model_dir,
        registry={"keep_versions": 0},
        gate={"min_examples": 10, "min_scenario_examples": 5},
        evaluation={"bootstrap_resamples": 2000, "max_new_tokens": 8},
        scoring={"length_target_chars": 20},
    )


def _version(db: Database, s: Settings, tiny_model_dir: Path, tmp_path: Path, name: str = "a") -> str:
    return register_version(db, s, adapter_dir=make_adapter(tiny_model_dir, tmp_path / name))


def test_a_verifier_zero_is_not_outvoted_in_an_evaluation(
    db: Database, s: Settings, tiny_model_dir: Path, tmp_path: Path, verifier: None
) -> None:
    add_holdout(db, 12)
    v1 = _version(db, s, tiny_model_dir, tmp_path)
    ev = get_evaluation(
        db,
        evaluate(db, s, candidate=v1, baseline="base", backend=ScriptedBackend({v1: POLITE, "base": GOOD})),
    )
    for e in ev["examples"]:
        assert e["candidate"]["aspects"] == {"order_json": 0.0, "length": 1.0, "no_refusal": 1.0}
        assert e["candidate"]["reward"] <= 0.1  # a plain mean said 0.67
    o = ev["metrics"]["overall"]
    # Every aspect, per side, in the report.
    assert o["aspects"]["order_json"]["candidate"] == 0.0 and o["aspects"]["order_json"]["baseline"] == 1.0
    assert o["aspects"]["length"]["candidate"] == 1.0 and o["aspects"]["length"]["baseline"] == 0.0
    assert o["aspects"]["order_json"]["n"] == 12 and o["aspects"]["order_json"]["diff_ci"] == [-1.0, -1.0]
    assert ev["metrics"]["reward_rule"]["mode"] == "explicit_first"
    assert ev["verdict"] == "reject"


def test_the_gate_refuses_a_candidate_better_on_length_but_worse_on_the_verifier(
    db: Database, s: Settings, tiny_model_dir: Path, tmp_path: Path, verifier: None
) -> None:
    add_holdout(db, 12)
    v1 = _version(db, s, tiny_model_dir, tmp_path)
    backend = ScriptedBackend({v1: CHATTY, "base": GOOD})
    ev = get_evaluation(db, evaluate(db, s, candidate=v1, baseline="base", backend=backend))
    o = ev["metrics"]["overall"]
    # explicit-first: 0.5 + 0.1 * (1 - 0.5) against 1 + 0.1 * (0.5 - 1), capped by json_valid = 1
    assert o["reward_candidate"] == pytest.approx(0.55) and o["reward_baseline"] == pytest.approx(0.95)
    assert ev["verdict"] == "reject" and "mean reward difference -0.4000" in ev["gate"]["reasons"][0]

    # The plain mean (the old rule) would have promoted it: (0.5 + 1 + 1) / 3 > (1 + 0 + 1 + 1) / 4.
    mean = s.model_copy(
        update={"scoring": s.scoring.model_copy(update={"combine": CombineSettings(mode="mean")})}
    )
    old = get_evaluation(db, evaluate(db, mean, candidate=v1, baseline="base", backend=backend))
    assert old["verdict"] == "promote"

    # A gate on the verifier itself refuses it too; one on length (what it is better at) would pass it.
    on_verifier = evaluate(
        db,
        s,
        candidate=v1,
        baseline="base",
        backend=backend,
        policy=GatePolicy(min_examples=10, metric="order_json"),
    )
    g = get_evaluation(db, on_verifier)
    assert g["verdict"] == "reject" and g["gate"]["reasons"][0].startswith("order_json difference -0.5000")
    on_length = evaluate(
        db,
        s,
        candidate=v1,
        baseline="base",
        backend=backend,
        policy=GatePolicy(min_examples=10, metric="length"),
    )
    assert get_evaluation(db, on_length)["verdict"] == "promote"
    unknown = evaluate(
        db,
        s,
        candidate=v1,
        baseline="base",
        backend=backend,
        policy=GatePolicy(min_examples=10, metric="typo"),
    )
    u = get_evaluation(db, unknown)
    assert u["verdict"] == "inconclusive" and "aspect 'typo'" in u["gate"]["reasons"][0]

    # eval compare judges both evaluations under today's rule, whatever each was stored under.
    c = compare_evaluations(db, old["id"], ev["id"], settings=s)
    assert c["overall"]["reward_candidate"] == [pytest.approx(0.55), pytest.approx(0.55)]
    assert c["aspects"]["order_json"] == [pytest.approx(0.5), pytest.approx(0.5)]
    assert c["reward_rule"]["mode"] == "explicit_first"


def test_loop_gate_names_its_metric(s: Settings) -> None:
    from learnloop.evaluation import policy_for

    data = s.model_dump()
    data["loops"] = [{"name": "orders", "scenario": "qa", "gate": {"metric": "order_json"}}]
    assert policy_for(Settings.model_validate(data), "orders").metric == "order_json"
    assert policy_for(Settings.model_validate(data), "other").metric == "reward"


def _served_with_heuristic_scores(db: Database, n: int, version: str) -> list[str]:
    """Served answers as `rewards apply` leaves them: the verifier says 0, the built-ins say 1."""
    ids = [f"served-{i}" for i in range(n)]
    batch = {
        "trajectories": [
            {
                "id": tid,
                "source": "served",
                "model_version": version,
                "messages": [
                    {"role": "user", "content": f"order {i}?"},
                    {"role": "assistant", "content": POLITE},
                ],
            }
            for i, tid in enumerate(ids)
        ],
        "scores": [
            {"trajectory_id": tid, "name": name, "value": value, "source": "heuristic"}
            for tid in ids
            for name, value in (("order_json", 0.0), ("length", 1.0), ("no_refusal", 1.0))
        ],
    }
    with db.session() as session:
        ingest(session, parse_batch(batch), holdout_fraction=0.0)
    return ids


def test_served_traffic_is_rewarded_by_the_same_rule_everywhere(
    db: Database, settings: Settings, tiny_model_dir: Path
) -> None:
    s = loop_settings(
        settings,
        base_model=str(tiny_model_dir),
        triggers={"min_new_examples": 1000, "reward_drop": 0.5, "reward_min_samples": 5},
    )
    with db.session() as sess:
        sess.add(ModelVersion(id="v0001", base_model=str(tiny_model_dir), loop="qa"))
        sess.flush()
        sess.add(
            Evaluation(
                candidate_id="v0001",
                metrics={"overall": {"n": 30, "reward_candidate": 0.9}},
                verdict="promote",
            )
        )
        sess.add(Alias(name="learnloop", version_id="v0001"))
    add(db, traces("t", 3))  # something to train on: the loop is ready, only a trigger is missing
    ids = _served_with_heuristic_scores(db, 6, "v0001")
    with db.read_session() as session:
        rewards = combined_rewards(session, ids, s.scoring)
        live = queries.live_reward_by_day(session, utcnow() - dt.timedelta(days=1), s.scoring)
        stats = reward_stats(session, weights=s.scoring)
    assert sorted(rewards) == sorted(ids) and all(r == pytest.approx(0.1) for r in rewards.values())
    assert [(r["version"], r["trajectories"]) for r in live] == [("v0001", 6)]
    assert live[0]["reward_mean"] == pytest.approx(0.1)  # the quality view: not the 0.67 of a plain mean
    assert stats["overall"]["mean"] == pytest.approx(0.1)
    # The reward-drop trigger: evaluated at 0.9, served at 0.1 (a plain mean, 0.67, stays in the margin).
    d = loops.check_loop(db, s, s.loops[0])
    assert d.fire and any(t.startswith("reward drop: served v0001 averages 0.100") for t in d.triggers)
