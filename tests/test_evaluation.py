"""Evaluation: held-out answers through a ServingBackend, scored with the scoring
stage's rewards, gated, stored."""

from __future__ import annotations

from pathlib import Path

import pytest
from registry_support import ScriptedBackend, add_holdout, make_adapter, settings_for

from learnloop.config import GatePolicy, Settings
from learnloop.errors import Conflict, ValidationFailed
from learnloop.evaluation import compare_evaluations, evaluate, gate, get_evaluation, list_evaluations
from learnloop.registry import get_version, promote, register_version
from learnloop.store import Database
from learnloop.store.events import recent_events


class FakeJudge:
    """Prefers the answer containing ``good``; with ``biased`` it always says A (position bias)."""

    model = "fake"

    def __init__(self, good: str, biased: bool = False) -> None:
        self.good, self.biased, self.calls = good, biased, 0

    def complete(self, messages: list[dict[str, str]]) -> str:
        self.calls += 1
        if self.biased:
            return '{"winner": "A"}'
        text = messages[-1]["content"]
        a = text.split("=== Answer A ===")[1].split("=== Answer B ===")[0]
        return '{"winner": "A", "reason": "x"}' if self.good in a else '{"winner": "B"}'


@pytest.fixture
def s(settings: Settings, tiny_model_dir: Path) -> Settings:
    return settings_for(
        settings,
        tiny_model_dir,
        registry={"keep_versions": 0},
        gate={"min_examples": 10, "min_scenario_examples": 5},
        evaluation={"bootstrap_resamples": 2000, "max_new_tokens": 8},
    )


def test_better_candidate_passes_with_judge_both_orders(
    db: Database, s: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    add_holdout(db, 12, scenario="qa")
    add_holdout(db, 8, scenario="chat", prefix="c")
    v1 = register_version(db, s, adapter_dir=make_adapter(tiny_model_dir, tmp_path / "a"))
    # Refusals score 0 on no_refusal: the base refuses, the candidate answers.
    backend = ScriptedBackend({v1: "Sure: four.", "base": "I'm sorry, but I can't help with that."})
    judge = FakeJudge("four")
    ev_id = evaluate(db, s, candidate=v1, baseline="serving", backend=backend, judge=judge)
    ev = get_evaluation(db, ev_id)
    o = ev["metrics"]["overall"]
    assert ev["baseline"] == "base" and o["n"] == 20
    assert o["wins"] == 20 and o["losses"] == 0 and o["reward_diff"] > 0.4
    assert (
        o["reward_diff_ci"][0] > 0
        and o["refusal_rate_baseline"] == 1.0
        and o["refusal_rate_candidate"] == 0.0
    )
    assert o["latency_p95_candidate_ms"] is not None and o["length_chars_candidate"] == len("Sure: four.")
    assert set(ev["metrics"]["scenarios"]) == {"qa", "chat"}
    assert o["judge"]["win_rate"] == 1.0 and o["judge"]["consistency"] == 1.0 and judge.calls == 40
    assert ev["verdict"] == "promote" and ev["gate"]["passed"], ev["gate"]["reasons"]
    assert all(req.temperature == 0.0 for _, req in backend.requests)  # greedy: reproducible
    assert len(ev["examples"]) == 20 and ev["examples"][0]["candidate"]["aspects"]["no_refusal"] == 1.0
    info = get_version(db, v1)
    assert info.gate["evaluation_id"] == ev_id and info.state == "candidate"
    promote(db, s, v1, actor="daemon", evaluation_id=ev_id)  # the gate's verdict is the evidence
    assert get_version(db, v1).state == "serving"
    assert [e.kind for e in recent_events(db, kinds=["evaluation.finished"])] == ["evaluation.finished"]


def test_worse_candidate_is_rejected_and_needs_force(
    db: Database, s: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    add_holdout(db, 12)
    v1 = register_version(db, s, adapter_dir=make_adapter(tiny_model_dir, tmp_path / "a"))
    backend = ScriptedBackend({v1: "I'm sorry, but I can't help with that.", "base": "four."})
    ev_id = evaluate(
        db, s, candidate=v1, baseline="base", backend=backend, judge=FakeJudge("four", biased=True)
    )
    ev = get_evaluation(db, ev_id)
    assert ev["verdict"] == "reject" and not ev["gate"]["passed"]
    assert any("refusal rate" in r for r in ev["gate"]["reasons"])
    # A judge that always picks the first answer flips with the order: every pair is a tie, consistency 0.
    j = ev["metrics"]["overall"]["judge"]
    assert j["ties"] == 12 and j["consistency"] == 0.0 and j["win_rate"] == 0.5
    assert get_version(db, v1).state == "rejected"
    with pytest.raises(Conflict, match="Promote with --force"):
        promote(db, s, v1)
    promote(db, s, v1, force=True, actor="alice", reason="we know")
    assert get_version(db, v1).state == "serving"


def test_too_few_examples_is_inconclusive_and_teacher_baseline(
    db: Database, s: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    add_holdout(db, 6, source="teacher")
    v1 = register_version(db, s, adapter_dir=make_adapter(tiny_model_dir, tmp_path / "a"))
    backend = ScriptedBackend({v1: "yes."})
    ev = get_evaluation(db, evaluate(db, s, candidate=v1, baseline="teacher", backend=backend))
    assert ev["verdict"] == "inconclusive" and "only 6" in ev["gate"]["reasons"][0]
    assert ev["baseline"] == "teacher" and {e["baseline"]["text"] for e in ev["examples"]} == {
        "four.",
        "yes.",
    }
    assert all(model == v1 for model, _ in backend.requests)  # the teacher side is not generated
    assert ev["metrics"]["overall"]["latency_p95_baseline_ms"] is None
    assert get_version(db, v1).state == "candidate"
    strict = evaluate(
        db, s, candidate=v1, baseline="teacher", backend=backend, policy=GatePolicy(min_examples=100)
    )
    assert get_evaluation(db, strict)["gate"]["policy"]["min_examples"] == 100
    with pytest.raises(ValidationFailed, match="baseline is the candidate"):
        evaluate(db, s, candidate=v1, baseline=v1, backend=backend)
    assert [e["id"] for e in list_evaluations(db, candidate=v1)] == [strict, ev["id"]]


def test_real_generation_on_the_tiny_model(
    db: Database, s: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    add_holdout(db, 10)
    v1 = register_version(db, s, adapter_dir=make_adapter(tiny_model_dir, tmp_path / "a", seed=1, scale=3.0))
    v2 = register_version(db, s, adapter_dir=make_adapter(tiny_model_dir, tmp_path / "b", seed=2, scale=3.0))
    from learnloop.evaluation.backend import default_backend

    backend = default_backend(tiny_model_dir, device="cpu")
    try:
        e1 = evaluate(db, s, candidate=v1, baseline="base", backend=backend, limit=5)
        e2 = evaluate(db, s, candidate=v2, baseline="base", backend=backend, limit=5)
        concurrent = settings_for(s, tiny_model_dir, evaluation={"concurrency": 3})
        e3 = evaluate(db, concurrent, candidate=v1, baseline="base", backend=backend, limit=5)
        assert set(backend.list()) == {
            "base",
            v1,
            v2,
        }  # a shared backend keeps them: the server may serve one
    finally:
        backend.close()
    a, b = get_evaluation(db, e1), get_evaluation(db, e2)
    assert a["metrics"]["overall"]["n"] == 5
    assert [x["id"] for x in a["examples"]] == [x["id"] for x in b["examples"]]  # the same frozen slice
    assert (
        a["examples"][0]["baseline"]["text"] == b["examples"][0]["baseline"]["text"]
    )  # greedy base answers agree
    assert any(x["candidate"]["text"] != y["candidate"]["text"] for x, y in zip(a["examples"], b["examples"]))
    assert all(x["candidate"]["latency_ms"] > 0 for x in a["examples"])
    # Answered several at a time (batched by the backend): the same greedy answers, in the same order.
    c = get_evaluation(db, e3)
    assert [(x["id"], x["candidate"]["text"], x["baseline"]["text"]) for x in c["examples"]] == [
        (x["id"], x["candidate"]["text"], x["baseline"]["text"]) for x in a["examples"]
    ]
    cmp = compare_evaluations(db, "v0001", str(e2))
    assert cmp["shared_examples"] == 5 and cmp["a"]["candidate"] == v1 and cmp["b"]["candidate"] == v2
    assert len(cmp["differ_most"]) == 5


def test_gate_rules() -> None:
    base = {
        "n": 100,
        "reward_diff": 0.05,
        "reward_diff_ci": [0.01, 0.09],
        "json_valid_candidate": 0.9,
        "json_valid_baseline": 0.9,
        "refusal_rate_candidate": 0.0,
        "refusal_rate_baseline": 0.0,
        "latency_p95_candidate_ms": 100.0,
        "latency_p95_baseline_ms": 100.0,
    }
    policy = GatePolicy()
    assert gate({"overall": base}, policy).passed
    assert gate({"overall": {**base, "reward_diff_ci": [-0.01, 0.09]}}, policy).verdict == "reject"
    assert not gate({"overall": base}, GatePolicy(margin=0.02)).passed
    assert gate({"overall": {**base, "n": 10}}, policy).verdict == "inconclusive"
    assert "JSON validity" in gate({"overall": {**base, "json_valid_candidate": 0.8}}, policy).reasons[0]
    assert "refusal" in gate({"overall": {**base, "refusal_rate_candidate": 0.1}}, policy).reasons[0]
    assert "latency" in gate({"overall": {**base, "latency_p95_candidate_ms": 200.0}}, policy).reasons[0]
    sc = {"qa": {"n": 50, "reward_diff": -0.2}, "tiny": {"n": 3, "reward_diff": -0.9}}
    v = gate({"overall": base, "scenarios": sc}, policy)
    assert not v.passed and len([r for r in v.reasons if "regresses" in r]) == 1 and "'qa'" in v.reasons[0]
    judge = {"n": 100, "win_rate": 0.6, "win_rate_ci": [0.52, 0.68]}
    assert gate({"overall": {**base, "judge": judge}}, GatePolicy(metric="judge_win_rate")).passed
    assert gate({"overall": base}, GatePolicy(metric="judge_win_rate")).verdict == "inconclusive"


def test_loop_policy_overrides_the_global_gate() -> None:
    from types import SimpleNamespace

    from learnloop.evaluation import policy_for

    s = SimpleNamespace(
        gate=GatePolicy(margin=0.01), loops=[SimpleNamespace(name="orders", gate={"min_examples": 4})]
    )
    assert policy_for(s, "orders") == GatePolicy(margin=0.01, min_examples=4)  # [gate], then the loop's keys
    assert policy_for(s, "other") == policy_for(s, None) == GatePolicy(margin=0.01)
