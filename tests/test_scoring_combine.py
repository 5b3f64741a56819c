"""The combined reward: the app's own signal decides, generic heuristics refine, checks only lower."""

from __future__ import annotations

import pytest

from helpers import chat
from learnloop.config import CombineSettings, ScoringSettings
from learnloop.datasets import build_dataset
from learnloop.scoring import apply_rewards, combine, combined_rewards
from learnloop.store import Database, ingest, parse_batch

H = "heuristic"


def test_the_issue_case_app_reward_zero_is_not_outvoted(db: Database, settings) -> None:
    """t.reward("ok", 0.0) on a short polite answer: length = no_refusal = 1 must not lift it to >= 0.5."""
    with db.session() as s:
        ingest(
            s,
            parse_batch(
                {
                    "trajectories": [
                        {"id": "bad", "messages": chat("What is 2+2?", "It is 5."), "scores": {"ok": 0.0}},
                        {"id": "good", "messages": chat("What is 2+3?", "It is 5."), "scores": {"ok": 1.0}},
                    ]
                }
            ),
        )
    apply_rewards(db, settings.scoring)
    with db.read_session() as s:
        rewards = combined_rewards(s, ["bad", "good"], settings.scoring)
        aspects = {
            n for n in __import__("learnloop.scoring", fromlist=["x"]).latest_aspects(s, ["bad"])["bad"]
        }
    assert {"ok", "length", "no_refusal"} <= aspects  # the heuristics did score it
    assert rewards["bad"] < 0.5 and rewards["bad"] == pytest.approx(0.1)
    assert rewards["good"] == pytest.approx(1.0)
    info = build_dataset(db, "sft", {"min_reward": 0.5}, settings=settings)
    assert info.stats["funnel"]["below_min_reward"] == 1 and info.count == 1

    # The old rule, kept for who wants it: the plain mean lets the heuristics outvote the app.
    mean = settings.scoring.model_copy(update={"combine": CombineSettings(mode="mean")})
    with db.read_session() as s:
        assert combined_rewards(s, ["bad"], mean)["bad"] == pytest.approx(2 / 3)


def test_generic_heuristics_stand_in_and_refine() -> None:
    cfg = ScoringSettings()
    # Nothing explicit: the generic mean stands in.
    assert combine({"length": 1.0, "no_refusal": 0.0}, cfg, {"length": H, "no_refusal": H}) == pytest.approx(
        0.5
    )
    # Explicit present: generic moves it only generic_share (0.1) of the way.
    assert combine(
        {"feedback": 0.6, "length": 0.0}, cfg, {"feedback": "human", "length": H}
    ) == pytest.approx(0.54)
    # A registered verifier (a heuristic that is neither generic nor a check) is explicit.
    assert combine(
        {"exact_match": 0.0, "length": 1.0}, cfg, {"exact_match": H, "length": H}
    ) == pytest.approx(0.1)
    # Judge and env are explicit; weights apply inside the class; weight 0 drops an aspect.
    weighted = cfg.model_copy(update={"weights": {"judge": 3.0, "ok": 1.0, "length": 0.0}})
    assert combine(
        {"judge": 1.0, "ok": 0.0, "length": 0.0}, weighted, {"judge": "judge", "ok": "env", "length": H}
    ) == pytest.approx(0.75)


def test_a_failing_check_can_only_lower() -> None:
    cfg = ScoringSettings()
    src = {"ok": "env", "json_valid": H, "length": H}
    # Invalid JSON where JSON was expected caps the reward at 0, whatever the app said.
    assert combine({"ok": 1.0, "json_valid": 0.0, "length": 1.0}, cfg, src) == pytest.approx(0.0)
    # A passing check never raises a low reward.
    assert combine({"ok": 0.2, "json_valid": 1.0}, cfg, src) == pytest.approx(0.2)
    # Fenced JSON (0.5) caps at 0.5.
    assert combine({"ok": 0.9, "json_valid": 0.5}, cfg, src) == pytest.approx(0.5)
    # Alone, a check stands in.
    assert combine({"json_valid": 1.0}, cfg, {"json_valid": H}) == pytest.approx(1.0)


def test_refinement_penalty_weight_is_configurable() -> None:
    src = {"feedback": "human", "refinement": H}
    assert combine({"feedback": 1.0, "refinement": -1.0}, ScoringSettings(), src) == pytest.approx(0.5)
    assert combine(
        {"feedback": 1.0, "refinement": -1.0}, ScoringSettings(refinement_weight=0.2), src
    ) == pytest.approx(0.8)
    assert combine(
        {"feedback": 1.0, "refinement": -1.0}, ScoringSettings(refinement_weight=0.0), src
    ) == pytest.approx(1.0)


def test_without_sources_the_names_decide_and_the_mean_is_only_a_mode() -> None:
    """No caller gets the plain mean by leaving out sources: that was how the evaluation let
    ``length`` and ``no_refusal`` outvote the app's verifier."""
    assert combine({"a": 1.0, "b": 0.0}) == pytest.approx(0.5)
    assert combine({"a": 1.0, "b": 0.0}, {"a": 3.0}) == pytest.approx(0.75)
    assert combine({}) is None
    issue = {"order_json": 0.0, "length": 1.0, "no_refusal": 1.0}
    assert combine(issue) == pytest.approx(0.1)
    assert combine(issue, ScoringSettings(), dict.fromkeys(issue, H)) == pytest.approx(0.1)
    mean = ScoringSettings(combine=CombineSettings(mode="mean"))
    assert combine(issue, mean) == pytest.approx(2 / 3)
