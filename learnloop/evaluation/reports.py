"""Reading stored evaluations: one, a list, and two side by side with the examples that differ most."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select

from learnloop.config import Settings
from learnloop.errors import NotFound
from learnloop.scoring.combine import CombineRule
from learnloop.store.db import Database
from learnloop.store.models import Evaluation


def _as_dict(ev: Evaluation, *, examples: bool) -> dict[str, Any]:
    data = {
        "id": ev.id,
        "candidate": ev.candidate_id,
        "baseline": ev.baseline_id,
        "dataset_id": ev.dataset_id,
        "scenario": ev.scenario,
        "verdict": ev.verdict,
        "gate": ev.gate or {},
        "metrics": ev.metrics or {},
        "created_at": ev.created_at.isoformat(),
    }
    if examples:
        data["examples"] = (ev.report or {}).get("examples", [])
    return data


def get_evaluation(db: Database, evaluation_id: int, *, examples: bool = True) -> dict[str, Any]:
    with db.read_session() as session:
        ev = session.get(Evaluation, evaluation_id)
        if ev is None:
            raise NotFound(f"No evaluation {evaluation_id}; `learnloop eval list` shows them.")
        return _as_dict(ev, examples=examples)


def list_evaluations(db: Database, *, candidate: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    query = select(Evaluation).order_by(Evaluation.id.desc()).limit(limit)
    if candidate is not None:
        query = query.where(Evaluation.candidate_id == candidate)
    with db.read_session() as session:
        return [_as_dict(e, examples=False) for e in session.scalars(query)]


def resolve_evaluation(db: Database, ref: str | int) -> int:
    """An evaluation id, or a version id meaning that version's latest evaluation."""
    text = str(ref)
    if text.isdigit():
        return int(text)
    if re.match(r"^v\d+$", text):
        with db.read_session() as session:
            ev_id = session.scalars(
                select(Evaluation.id)
                .where(Evaluation.candidate_id == text)
                .order_by(Evaluation.id.desc())
                .limit(1)
            ).first()
        if ev_id is None:
            raise NotFound(f"{text} has no evaluation yet: `learnloop eval run --candidate {text}`.")
        return ev_id
    raise NotFound(f"{text!r} is neither an evaluation id nor a version id.")


_KEYS = (
    "n",
    "reward_candidate",
    "reward_baseline",
    "reward_diff",
    "reward_diff_ci",
    "wins",
    "ties",
    "losses",
    "json_valid_candidate",
    "refusal_rate_candidate",
    "length_chars_candidate",
    "latency_p95_candidate_ms",
)


def _rescored(ev: dict[str, Any], rule: CombineRule, settings: Settings | None) -> dict[str, Any]:
    """The evaluation's overall numbers and examples with every reward recomputed from the stored
    aspects under ``rule``: two evaluations are compared under one rule, today's, even when one
    was stored under another (or before the explicit-first rule)."""
    from learnloop.evaluation.run import build_metrics, rescore

    ev["examples"] = [rescore(x, rule) for x in ev["examples"]]
    if ev["examples"]:
        ev["metrics"] = build_metrics(
            ev["examples"],
            n_resamples=settings.evaluation.bootstrap_resamples if settings is not None else 9999,
            seed=settings.evaluation.seed if settings is not None else 0,
            rule=rule,
        )
    return ev


def compare_evaluations(
    db: Database, a: str | int, b: str | int, *, top: int = 5, settings: Settings | None = None
) -> dict[str, Any]:
    """Two evaluations side by side; with shared held-out examples, those whose candidate reward differs most.

    Rewards are recomputed from each example's stored aspects with scoring's one rule (the
    ``[scoring]`` settings of ``settings``; defaults without), so both sides are judged alike.
    Without shared examples (different held-out sets) the examples listed are, for each, those
    where its candidate and baseline differ most.
    """
    rule = CombineRule.of(settings.scoring if settings is not None else None)
    ea = _rescored(get_evaluation(db, resolve_evaluation(db, a)), rule, settings)
    eb = _rescored(get_evaluation(db, resolve_evaluation(db, b)), rule, settings)
    oa, ob = ea["metrics"].get("overall", {}), eb["metrics"].get("overall", {})
    table = {k: [oa.get(k), ob.get(k)] for k in _KEYS}
    aspect_names = sorted(set(oa.get("aspects") or {}) | set(ob.get("aspects") or {}))
    aspects = {
        n: [((o.get("aspects") or {}).get(n) or {}).get("candidate") for o in (oa, ob)] for n in aspect_names
    }
    scenarios = sorted(set(ea["metrics"].get("scenarios", {})) | set(eb["metrics"].get("scenarios", {})))
    per_scenario = {
        s: [
            ea["metrics"].get("scenarios", {}).get(s, {}).get("reward_candidate"),
            eb["metrics"].get("scenarios", {}).get(s, {}).get("reward_candidate"),
        ]
        for s in scenarios
    }
    by_id_b = {x["id"]: x for x in eb["examples"]}
    shared = [(x, by_id_b[x["id"]]) for x in ea["examples"] if x["id"] in by_id_b]
    differ: list[dict[str, Any]] = []
    if shared:
        shared.sort(
            key=lambda p: abs(p[0]["candidate"]["reward"] - p[1]["candidate"]["reward"]), reverse=True
        )
        for x, y in shared[:top]:
            differ.append(
                {
                    "id": x["id"],
                    "scenario": x.get("scenario"),
                    "prompt": x.get("prompt"),
                    "a": {
                        "model": ea["candidate"],
                        "text": x["candidate"]["text"],
                        "reward": x["candidate"]["reward"],
                    },
                    "b": {
                        "model": eb["candidate"],
                        "text": y["candidate"]["text"],
                        "reward": y["candidate"]["reward"],
                    },
                }
            )
    else:
        for ev in (ea, eb):
            for x in sorted(ev["examples"], key=lambda e: abs(e.get("diff") or 0.0), reverse=True)[:top]:
                differ.append(
                    {
                        "id": x["id"],
                        "evaluation": ev["id"],
                        "scenario": x.get("scenario"),
                        "prompt": x.get("prompt"),
                        "a": {
                            "model": ev["candidate"],
                            "text": x["candidate"]["text"],
                            "reward": x["candidate"]["reward"],
                        },
                        "b": {
                            "model": ev["baseline"],
                            "text": x["baseline"]["text"],
                            "reward": x["baseline"]["reward"],
                        },
                    }
                )
    return {
        "a": {k: ea[k] for k in ("id", "candidate", "baseline", "scenario", "verdict", "created_at")},
        "b": {k: eb[k] for k in ("id", "candidate", "baseline", "scenario", "verdict", "created_at")},
        "overall": table,
        "aspects": aspects,
        "reward_rule": rule.describe(),
        "scenarios": per_scenario,
        "shared_examples": len(shared),
        "differ_most": differ,
    }
