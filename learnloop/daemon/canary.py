"""The canary: a version that passed the gate against its teacher takes the teacher's traffic in steps.

While an alias serves an upstream (``upstream:<name>``, the teacher), a loop's version that passes
the gate does not replace it at once. ``start`` gives it the first step's share of the alias's users
(``[canary] steps``, e.g. 10% -> 50% -> 100%; a split, so users stay on their side as the share
grows). At each step ``tick`` compares the live reward of the version's served answers since the
step began with the teacher's (its latest ``teacher_window`` scored answers on the alias), each
answer's reward under scoring's one rule:

* a drop below the teacher by more than the margin (``canary.margin``, else the loop's gate
  ``teacher_margin``) returns every user to the teacher: at once when even the upper end of the
  difference's 95% interval is below it, else at the end of the step when its mean is;
* otherwise, once the step has lasted ``min_step_seconds`` with ``min_answers`` scored answers on
  each side, the next step's share; after the last step (100%) the version is promoted and the
  teacher leaves the alias.

Every move goes through the registry's one function (``registry.move``, actor ``canary``), so each
step and each fall-back is in the alias log with its reason. A fall-back also records a
``canary.fell_back`` event (the ``canary_fallback`` alert rule fires on it) and a log line. The
state lives in the alias row and its log (the last split by ``canary`` starts the current step),
so a restarted daemon carries on where the last one stopped. A person's own move (a split, a set)
ends the canary's say over the alias.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select

from learnloop.config import CanarySettings, Settings
from learnloop.daemon.log import emit
from learnloop.evaluation.gate import policy_for
from learnloop.store.aliases import is_upstream
from learnloop.store.db import Database
from learnloop.store.models import Alias, AliasEvent, ModelVersion, Source, Trajectory, utcnow

log = logging.getLogger("learnloop.daemon")

ACTOR = "canary"
_Z95 = 1.959964


@dataclass
class CanaryState:
    """One alias's canary as ``tick`` sees it (also what status shows)."""

    alias: str
    teacher: str
    candidate: str
    share: float
    step: int  # 1-based
    steps: list[float]
    step_started: dt.datetime
    loop: str | None = None
    margin: float = 0.0
    student_reward: float | None = None
    teacher_reward: float | None = None
    n_student: int = 0
    n_teacher: int = 0
    diff: float | None = None
    diff_ci: list[float] | None = None
    decision: str = "waiting"  # waiting, advance, promote, fall_back
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["step_started"] = self.step_started.isoformat()
        return out


def _loop_of(settings: Settings, alias: str, version: ModelVersion | None) -> str | None:
    if version is not None and version.loop:
        return version.loop
    return next((lp.name for lp in settings.loops if lp.alias == alias), None)


def settings_for(settings: Settings, loop: str | None) -> tuple[CanarySettings, float]:
    """The canary settings of ``loop`` and its margin (``margin``, else the gate's ``teacher_margin``)."""
    cfg = settings.canary_for(loop)
    margin = cfg.margin if cfg.margin is not None else policy_for(settings, loop).teacher_margin
    return cfg, margin


# -- starting ---------------------------------------------------------------------------------------


def wanted(db: Database, settings: Settings, alias: str, loop: str | None) -> bool:
    """Whether a version of ``loop`` passing the gate on ``alias`` starts a canary instead of a promote:
    the alias serves an upstream and the loop's canary is on."""
    with db.read_session() as s:
        row = s.get(Alias, alias)
        serving = row.version_id if row is not None else None
    return is_upstream(serving) and settings.canary_for(loop).enabled


def active(db: Database, alias: str) -> CanaryState | None:
    """The canary running on ``alias`` (None when there is none)."""
    with db.read_session() as s:
        return _active(s, None, alias)


def start(
    db: Database,
    settings: Settings,
    alias: str,
    version_id: str,
    *,
    loop: str | None = None,
    evaluation_id: int | None = None,
) -> str:
    """Give ``version_id`` the first step's share of ``alias`` (from its teacher). Returns what happened:
    ``started``, ``running`` (this version's canary is on already) or ``held`` (another version's is)."""
    from learnloop.registry import move

    cfg, margin = settings_for(settings, loop)
    current = active(db, alias)
    if current is not None:
        if current.candidate == version_id:
            return "running"
        emit(
            db,
            "version.held",
            f"{version_id} passed the gate against the teacher, but the canary of {current.candidate} "
            f"is at step {current.step}/{len(current.steps)} on {alias!r}; it waits for that one to end",
            loop=loop,
            version_id=version_id,
        )
        return "held"
    share = cfg.steps[0]
    move(
        db,
        settings,
        alias,
        "split",
        version_id,
        share=share,
        actor=ACTOR,
        reason=f"canary step 1/{len(cfg.steps)}: {share:.0%} of users, after the gate passed it against "
        f"the teacher"
        + (f" (evaluation {evaluation_id})" if evaluation_id else "")
        + f"; falls back if its live reward drops more than {margin} below the teacher's",
    )
    emit(
        db,
        "canary.started",
        f"{alias}: canary of {version_id} started at {share:.0%} of users",
        loop=loop,
        version_id=version_id,
        data={"alias": alias, "share": share, "steps": cfg.steps, "evaluation_id": evaluation_id},
    )
    return "started"


# -- watching ---------------------------------------------------------------------------------------


def _active(s: Any, settings: Settings | None, alias: str) -> CanaryState | None:
    row = s.get(Alias, alias)
    if row is None or not is_upstream(row.version_id) or not row.candidate_id or not (row.split or 0) > 0:
        return None
    last = s.scalars(
        select(AliasEvent)
        .where(AliasEvent.alias == alias, AliasEvent.action == "split")
        .order_by(AliasEvent.id.desc())
        .limit(1)
    ).first()
    if last is None or last.actor != ACTOR or last.to_version != row.candidate_id:
        return None  # a person's split: not the canary's to move
    version = s.get(ModelVersion, row.candidate_id)
    loop = None
    steps = [0.1, 0.5, 1.0]
    margin = 0.0
    if settings is not None:
        loop = _loop_of(settings, alias, version)
        cfg, margin = settings_for(settings, loop)
        steps = cfg.steps
    share = float(row.split)
    step = next((i + 1 for i, x in enumerate(steps) if x >= share - 1e-9), len(steps))
    return CanaryState(
        alias=alias,
        teacher=row.version_id,
        candidate=row.candidate_id,
        share=share,
        step=step,
        steps=steps,
        step_started=last.created_at,
        loop=loop,
        margin=margin,
    )


def _rewards(s: Any, settings: Settings, query: Any) -> list[float]:
    from learnloop.scoring.combine import combined_rewards

    ids = list(s.scalars(query))
    return list(combined_rewards(s, ids, settings.scoring).values())


def measure(s: Any, settings: Settings, state: CanaryState) -> CanaryState:
    """Fill in both sides' live rewards (the version's since its step began, the teacher's latest)."""
    cfg, _ = settings_for(settings, state.loop)
    student = _rewards(
        s,
        settings,
        select(Trajectory.id).where(
            Trajectory.model_version == state.candidate,
            Trajectory.source == Source.served,
            Trajectory.created_at >= state.step_started,
        ),
    )
    # The teacher's latest answers, scored or not yet: its reference is the scored ones among them.
    teacher = _rewards(
        s,
        settings,
        select(Trajectory.id)
        .where(Trajectory.model_version == state.teacher)
        .order_by(Trajectory.created_at.desc())
        .limit(cfg.teacher_window),
    )
    state.n_student, state.n_teacher = len(student), len(teacher)
    state.student_reward = sum(student) / len(student) if student else None
    state.teacher_reward = sum(teacher) / len(teacher) if teacher else None
    if len(student) >= 2 and len(teacher) >= 2:
        diff = state.student_reward - state.teacher_reward  # type: ignore[operator]
        se = math.sqrt(_var(student) / len(student) + _var(teacher) / len(teacher))
        state.diff = diff
        state.diff_ci = [diff - _Z95 * se, diff + _Z95 * se]
    return state


def _var(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)


def decide(state: CanaryState, cfg: CanarySettings, now: dt.datetime) -> CanaryState:
    """The step's decision from its measurements (pure: what ``tick`` then does)."""
    enough = state.n_student >= cfg.min_answers and state.n_teacher >= cfg.min_answers
    elapsed = (now - state.step_started).total_seconds()
    live = (
        f"live reward {state.student_reward:.3f} over {state.n_student} answers vs the teacher's "
        f"{state.teacher_reward:.3f} over {state.n_teacher}"
        if state.student_reward is not None and state.teacher_reward is not None
        else f"{state.n_student} scored answers of {state.candidate}, {state.n_teacher} of the teacher"
    )
    if state.diff is not None and enough and state.diff_ci[1] < -state.margin:  # type: ignore[index]
        state.decision = "fall_back"
        state.reason = (
            f"{live}: {state.diff:+.3f} (95% CI {state.diff_ci[0]:+.3f} .. {state.diff_ci[1]:+.3f}) "  # type: ignore[index]
            f"is below -{state.margin} for sure"
        )
    elif not enough or elapsed < cfg.min_step_seconds:
        state.decision = "waiting"
        state.reason = (
            f"step {state.step}/{len(state.steps)} ({state.share:.0%}): {live}; needs {cfg.min_answers} "
            f"scored answers a side and {cfg.min_step_seconds:g} s ({elapsed:.0f} s so far)"
        )
    elif state.diff is not None and state.diff < -state.margin:
        state.decision = "fall_back"
        state.reason = f"{live}: {state.diff:+.3f} is more than {state.margin} below the teacher"
    elif state.step >= len(state.steps):
        state.decision = "promote"
        state.reason = f"canary done at {state.share:.0%}: {live} (margin {state.margin})"
    else:
        state.decision = "advance"
        state.reason = (
            f"canary step {state.step + 1}/{len(state.steps)}: {state.steps[state.step]:.0%} of users; "
            f"step {state.step} held: {live} (margin {state.margin})"
        )
    return state


def status(db: Database, settings: Settings) -> list[dict[str, Any]]:
    """Every running canary with its live measurements (for status and the dashboard)."""
    out = []
    now = utcnow()
    with db.read_session() as s:
        for name in s.scalars(select(Alias.name).where(Alias.candidate_id.is_not(None))):
            state = _active(s, settings, name)
            if state is None:
                continue
            cfg, _ = settings_for(settings, state.loop)
            out.append(decide(measure(s, settings, state), cfg, now).as_dict())
    return out


def tick(db: Database, settings: Settings, now: dt.datetime | None = None) -> list[CanaryState]:
    """Check every running canary once and act on its decision; returns the states it acted on."""
    from learnloop.registry import move_in

    now = now or utcnow()
    acted = []
    with db.read_session() as s:
        names = list(s.scalars(select(Alias.name).where(Alias.candidate_id.is_not(None))))
    for name in names:
        with db.read_session() as s:
            state = _active(s, settings, name)
            if state is None:
                continue
            cfg, _ = settings_for(settings, state.loop)
            decide(measure(s, settings, state), cfg, now)
        if state.decision == "waiting":
            continue
        with db.session() as s:
            row = s.get(Alias, name, with_for_update=True)
            if (
                row is None
                or row.candidate_id != state.candidate
                or abs((row.split or 0) - state.share) > 1e-9
            ):
                continue  # moved since it was measured (another daemon, a person): look again next tick
            if state.decision == "advance":
                move_in(
                    s,
                    settings,
                    name,
                    "split",
                    state.candidate,
                    share=state.steps[state.step],
                    actor=ACTOR,
                    reason=state.reason,
                )
            elif state.decision == "promote":
                move_in(s, settings, name, "promote", state.candidate, actor=ACTOR, reason=state.reason)
            else:
                move_in(
                    s, settings, name, "split", None, actor=ACTOR, reason=f"canary fell back: {state.reason}"
                )
        _announce(db, state)
        acted.append(state)
    return acted


def _announce(db: Database, state: CanaryState) -> None:
    data = {k: v for k, v in state.as_dict().items() if k not in ("extra",)}
    if state.decision == "fall_back":
        emit(
            db,
            "canary.fell_back",
            f"{state.alias}: all traffic back to {state.teacher}; {state.candidate} fell back at step "
            f"{state.step}/{len(state.steps)} ({state.share:.0%}): {state.reason}",
            level="error",
            loop=state.loop,
            version_id=state.candidate,
            data=data,
        )
        log.error("canary of %s on %s fell back: %s", state.candidate, state.alias, state.reason)
    elif state.decision == "promote":
        emit(
            db,
            "canary.finished",
            f"{state.alias}: {state.candidate} now serves every user; the teacher {state.teacher} is off "
            f"the alias ({state.reason})",
            loop=state.loop,
            version_id=state.candidate,
            data=data,
        )
    else:
        emit(
            db,
            "canary.step",
            f"{state.alias}: {state.candidate} moves to {state.steps[state.step]:.0%} ({state.reason})",
            loop=state.loop,
            version_id=state.candidate,
            data=data,
        )
