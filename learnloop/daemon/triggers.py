"""Triggers: why a loop's next cycle should start now. Each is a plain function of a
:class:`~learnloop.daemon.checks.LoopCheck` that returns the reason a person reads, or None.

The built-ins below run for every loop, in this order, and stay silent unless their setting in
``[loops.triggers]`` is set; register your own with :func:`trigger` (see ``daemon/checks.py``). A
cycle starts when any trigger fires and every readiness check passes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from learnloop.config import Settings
from learnloop.daemon.checks import LoopCheck, Registry
from learnloop.store.models import Alias, Evaluation, Source, Trajectory

TriggerFn = Callable[[LoopCheck], "str | None"]
TRIGGERS: Registry[TriggerFn] = Registry("trigger", "triggers.custom")
trigger = TRIGGERS.decorator  # @trigger("name"): a user's trigger, for the loops that name it


def _builtin(name: str) -> Callable[[TriggerFn], TriggerFn]:
    return lambda fn: TRIGGERS.register(fn, name, builtin=True)


@_builtin("threshold")
def threshold(check: LoopCheck) -> str | None:
    """Enough new examples since the last cycle (``min_new_examples``)."""
    wanted = check.loop.triggers.min_new_examples
    if check.new_examples >= wanted:
        return f"threshold: {check.new_examples} >= {wanted} new {check.unit}"
    return None


@_builtin("max_interval")
def max_interval(check: LoopCheck) -> str | None:
    """Any new example, and ``max_interval`` since the last cycle (or none yet)."""
    limit, last = check.loop.triggers.max_interval, check.last_cycle_at
    if not (check.new_examples > 0 and limit):
        return None
    if last is not None and (check.now - last).total_seconds() < limit:
        return None
    ago = (
        "never trained"
        if last is None
        else f"last cycle {(check.now - last).total_seconds() / 3600:.1f} h ago"
    )
    return f"max_interval: {ago} (max {limit / 3600:.1f} h)"


@_builtin("daily")
def daily(check: LoopCheck) -> str | None:
    """Any new example, ``daily_at`` (UTC) has passed today, and no cycle since."""
    at, last = check.loop.triggers.daily_at, check.last_cycle_at
    if not (check.new_examples > 0 and at):
        return None
    hh, mm = map(int, at.split(":"))
    slot = check.now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    if check.now >= slot and (last is None or last < slot):
        return f"daily at {at} UTC"
    return None


@_builtin("reward_drop")
def reward_drop(check: LoopCheck) -> str | None:
    """Any new example, and the served version's recent mean reward fell below its evaluated
    level by ``reward_drop``."""
    t = check.loop.triggers
    if not (check.new_examples > 0 and t.reward_drop):
        return None
    vid, level, rewards = served_level(check)
    if level is None:
        return None
    if len(rewards) < t.reward_min_samples:
        return None
    mean = sum(rewards) / len(rewards)
    if level - mean >= t.reward_drop:
        return (
            f"reward drop: served {vid} averages {mean:.3f} over {len(rewards)} trajectories "
            f"({t.reward_window_hours:g} h), evaluated at {level:.3f} (margin {t.reward_drop})"
        )
    return None


def served_rewards(session: Session, settings: Settings, ids: Sequence[str]) -> list[float]:
    """The live rewards of the served answers ``ids`` (the unscored have none)."""
    from learnloop.scoring.combine import combined_rewards

    return list(combined_rewards(session, ids, settings.scoring).values())


def evaluated_reward(metrics: dict[str, Any]) -> float | None:
    """The evaluated mean reward of the candidate (the evaluation stage's ``overall.reward_candidate``)."""
    overall = metrics.get("overall")
    if isinstance(overall, dict) and isinstance(overall.get("reward_candidate"), (int, float)):
        return float(overall["reward_candidate"])
    for key in ("reward", "reward_mean", "mean_reward", "candidate_reward"):
        v = metrics.get(key)
        if isinstance(v, dict):
            v = v.get("mean", v.get("candidate"))
        if isinstance(v, (int, float)):
            return float(v)
    return None


def served_level(check: LoopCheck) -> tuple[str | None, float | None, list[float]]:
    """The loop's served version, the reward it was evaluated at (None when nothing serves or it has no
    evaluation) and the rewards of its answers served within ``reward_window_hours``."""
    t = check.loop.triggers
    with check.db.read_session() as s:
        alias = s.get(Alias, check.loop.alias)
        if alias is None or alias.version_id is None:
            return None, None, []
        vid = alias.version_id
        ev = s.scalars(
            select(Evaluation).where(Evaluation.candidate_id == vid).order_by(Evaluation.id.desc()).limit(1)
        ).first()
        level = evaluated_reward(ev.metrics if ev else {})
        if level is None:
            return None, None, []
        ids = list(
            s.scalars(
                select(Trajectory.id).where(
                    Trajectory.source == Source.served,
                    Trajectory.model_version == vid,
                    Trajectory.created_at >= check.now - dt.timedelta(hours=t.reward_window_hours),
                )
            )
        )
        return vid, level, served_rewards(s, check.settings, ids)
