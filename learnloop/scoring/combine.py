"""One reward per answer from its many scores: the one rule every stage uses.

``combine`` is the only function that turns an answer's aspects into its reward. Datasets,
evaluation (and so the gate and ``eval compare``), the dashboard's quality view, the daemon's
reward-drop trigger and the reward statistics all call it (or ``combine_scores`` /
``combined_rewards``, which call it), always with the ``[scoring]`` settings, so an answer's
reward is the same number wherever it is shown or compared.

The rule (``[scoring.combine] mode = "explicit_first"``, the default) keeps the app's own signal in
charge. Every aspect (the newest score of each name) falls in one class:

- **explicit**: scores whose source is in ``explicit_sources`` (``env`` rewards the app recorded
  with ``t.reward()``, ``human`` feedback, the ``judge``), and any heuristic a user registered
  (a verifier) that is neither generic nor a check;
- **generic**: the built-in heuristics that say little about whether the task was done
  (``length``, ``no_refusal``);
- **checks**: heuristics that detect a failure (``json_valid``, ``json_schema``, ``tool_success``);
- **penalties**: ``refinement`` (the user had to ask again), weighted by ``scoring.refinement_weight``.

Then:

1. When explicit aspects exist, their weighted mean is the reward, and the generic ones may move it
   at most ``generic_share`` (0.1) of the way toward their own mean. So ``t.reward("ok", 0.0)`` with
   ``length = no_refusal = 1`` gives 0.1, not the 0.67 of a plain mean.
2. With no explicit aspect, the generic mean stands in.
3. Checks can only lower the reward: it is capped at the lowest check value (with nothing else,
   that value stands in). Invalid JSON where JSON was expected (``json_valid = 0``) caps it at 0.
4. Penalties are subtracted: ``refinement = -1`` with weight 0.5 takes 0.5 off.

``[scoring] weights`` apply inside each class (weight 0 drops an aspect). ``mode = "mean"`` restores
the plain weighted mean of every aspect (the only way to get it: a caller that knows no sources still
gets the explicit-first rule, with each aspect classed by its name).

Where each aspect came from decides its class, not the caller: stored scores carry their source; an
evaluation's fresh answers are scored by the registered reward functions alone, so every aspect there
has source ``heuristic`` (a user's verifier is then explicit, the built-ins fall in their class).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from learnloop.config import CombineSettings, ScoringSettings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

PENALTIES = ("refinement",)
HEURISTIC = "heuristic"  # the score source of every registered reward function (built-in or the user's)


@dataclass(frozen=True)
class CombineRule:
    """What ``combine`` needs from the settings, resolved once."""

    weights: Mapping[str, float] = field(default_factory=dict)
    policy: CombineSettings = field(default_factory=CombineSettings)
    penalties: Mapping[str, float] = field(default_factory=lambda: {"refinement": 0.5})

    @classmethod
    def of(cls, scoring: ScoringSettings | Mapping[str, float] | CombineRule | None) -> CombineRule:
        """From ScoringSettings (weights, rule, refinement weight),
        a plain weights mapping, or None (defaults)."""
        if isinstance(scoring, CombineRule):
            return scoring
        if isinstance(scoring, ScoringSettings):
            return cls(scoring.weights, scoring.combine, {"refinement": scoring.refinement_weight})
        return cls(dict(scoring or {}))

    def kind(self, name: str, source: str | None) -> str:
        """explicit | generic | check | penalty (see the module docstring)."""
        if name in self.penalties:
            return "penalty"
        if source is None:  # no source known: the name alone decides
            source = HEURISTIC if name in self.policy.generic or name in self.policy.checks else "env"
        if source == HEURISTIC:
            if name in self.policy.checks:
                return "check"
            if name in self.policy.generic:
                return "generic"
            return "explicit"  # a verifier the user registered
        return "explicit" if source in self.policy.explicit_sources else "generic"

    def describe(self) -> dict[str, Any]:
        """The rule as plain data, stored beside the numbers it made (an evaluation's ``reward_rule``)."""
        return {
            "mode": self.policy.mode,
            "weights": dict(self.weights),
            "explicit_sources": list(self.policy.explicit_sources),
            "generic": list(self.policy.generic),
            "checks": list(self.policy.checks),
            "generic_share": self.policy.generic_share,
            "penalties": dict(self.penalties),
        }


def _mean(pairs: list[tuple[float, float]]) -> float | None:
    norm = sum(abs(w) for w, _ in pairs)
    return sum(w * v for w, v in pairs) / norm if norm else None


def combine(
    aspects: Mapping[str, float],
    weights: Mapping[str, float] | ScoringSettings | CombineRule | None = None,
    sources: Mapping[str, str | None] | None = None,
) -> float | None:
    """The reward of one answer from its ``aspects`` (name -> value); ``sources`` names each aspect's
    score source (``heuristic``, ``human``, ``judge``, ``env``).

    The explicit-first rule of the module docstring. An aspect without a known source is classed by
    its name alone (a generic or check name is a built-in heuristic, any other name explicit).
    ``weights``: the ``[scoring]`` settings (pass them: weights, rule and refinement weight), or a
    weights mapping with the default rule. With ``mode = "mean"`` it is the weighted mean of all
    aspects (missing from the weights: 1.0; weight 0: ignored). None when nothing counts.
    """
    # NaN/inf stored before the ingest refused them are not rewards: they would poison every mean.
    if not all(map(math.isfinite, aspects.values())):
        aspects = {n: v for n, v in aspects.items() if math.isfinite(v)}
    rule = CombineRule.of(weights)
    w = rule.weights
    if rule.policy.mode == "mean":
        return _mean([(w.get(n, 1.0), v) for n, v in aspects.items()])
    sources = sources or {}
    classes: dict[str, list[tuple[float, float]]] = {
        "explicit": [],
        "generic": [],
        "check": [],
        "penalty": [],
    }
    for name, value in aspects.items():
        weight = w.get(name, 1.0)
        if weight == 0:
            continue
        kind = rule.kind(name, sources.get(name))
        classes[kind].append((rule.penalties.get(name, weight) if kind == "penalty" else weight, value))
    explicit, generic = _mean(classes["explicit"]), _mean(classes["generic"])
    if explicit is not None:
        reward: float | None = explicit
        if generic is not None:
            reward = explicit + rule.policy.generic_share * (generic - explicit)
    else:
        reward = generic
    if classes["check"]:
        cap = min(v for _, v in classes["check"])
        reward = cap if reward is None else min(reward, cap)
    if classes["penalty"]:
        penalty = sum(pw * max(0.0, -v) for pw, v in classes["penalty"])
        reward = (0.0 if reward is None else reward) - penalty
    return reward


def latest_scores(session: Session, trajectory_ids: Iterable[str]) -> dict[str, dict[str, tuple[float, str]]]:
    """For each trajectory, the newest (value, source) of each score name (aspect)."""
    # Imported here: the rule above is also used by training processes, which never load the store.
    from sqlalchemy import select

    from learnloop.store.models import Score
    from learnloop.store.query import chunks

    ids = list(trajectory_ids)
    out: dict[str, dict[str, tuple[float, str]]] = {}
    for chunk in chunks(ids):
        rows = session.execute(
            select(Score.trajectory_id, Score.name, Score.value, Score.source)
            .where(Score.trajectory_id.in_(chunk))
            .order_by(Score.created_at, Score.id)
        ).all()
        for tid, name, value, source in rows:
            out.setdefault(tid, {})[name] = (value, _val(source))  # later rows overwrite earlier ones
    return out


def latest_aspects(session: Session, trajectory_ids: Iterable[str]) -> dict[str, dict[str, float]]:
    """For each trajectory, the newest value of each score name (aspect)."""
    return {
        tid: {n: v for n, (v, _) in a.items()} for tid, a in latest_scores(session, trajectory_ids).items()
    }


def combine_scores(
    scores: Mapping[str, tuple[float, str]],
    rule: CombineRule | ScoringSettings | Mapping[str, float] | None = None,
) -> float | None:
    """``combine`` over what ``latest_scores`` returns for one trajectory."""
    return combine({n: v for n, (v, _) in scores.items()}, rule, {n: s for n, (_, s) in scores.items()})


def combined_rewards(
    session: Session,
    trajectory_ids: Iterable[str],
    weights: Mapping[str, float] | ScoringSettings | CombineRule | None = None,
) -> dict[str, float]:
    """Combined reward of each trajectory that has at least one score (unscored ones are absent).

    ``weights``: the ``[scoring]`` settings (weights, combine rule, refinement weight), or just a
    weights mapping (the default rule).
    """
    rule = CombineRule.of(weights)
    result = {}
    for tid, scores in latest_scores(session, trajectory_ids).items():
        value = combine_scores(scores, rule)
        if value is not None:
            result[tid] = value
    return result


def _val(v: Any) -> Any:
    return getattr(v, "value", v)
