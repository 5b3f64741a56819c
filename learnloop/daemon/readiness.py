"""Readiness checks: what must hold before a loop's cycle may start. Each is a plain function of a
:class:`~learnloop.daemon.checks.LoopCheck` that returns ``(ok, reason)``, or None when it does not
apply to the loop; the reason is what ``learnloop loops status`` shows.

The built-ins below run for every loop, in this order; register your own with
:func:`readiness_check` (see ``daemon/checks.py``).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from learnloop.config.loops import base_model_of
from learnloop.daemon.checks import LoopCheck, Registry
from learnloop.daemon.plan import describe, holdout_needed, plan
from learnloop.daemon.triggers import reward_drop, served_level
from learnloop.errors import LearnloopError
from learnloop.store.models import Source, Trajectory

ReadinessFn = Callable[[LoopCheck], "tuple[bool, str] | None"]
READINESS: Registry[ReadinessFn] = Registry("readiness check", "triggers.custom_checks")
readiness_check = READINESS.decorator  # @readiness_check("name"): a user's check, for the loops naming it


@dataclass
class Check:
    """One readiness check's result: it passed or not, and the sentence a person reads."""

    name: str
    ok: bool
    reason: str


def _builtin(name: str) -> Callable[[ReadinessFn], ReadinessFn]:
    return lambda fn: READINESS.register(fn, name, builtin=True)


@_builtin("new_examples")
def new_examples(check: LoopCheck) -> tuple[bool, str]:
    """Something new to train on (the count is a reason of its own, whatever the threshold)."""
    loop, n = check.loop, check.new_examples
    src = "/".join(loop.sources) + " " if loop.sources else ""
    if n == 0:
        return False, f"no new {src}{check.unit} since the last cycle"
    scenario = f" (scenario {loop.scenario})" if loop.scenario else ""
    return True, f"{n}/{loop.triggers.min_new_examples} new {src}{check.unit}{scenario}"


@_builtin("steps")
def steps(check: LoopCheck) -> tuple[bool, str] | None:
    """Enough examples for the algorithm's floor of optimizer steps (a smaller cycle waits)."""
    p = plan(check.loop, check.new_examples, check.unit)
    check.notes["plan"] = {**p.as_dict(), "summary": describe(p)}
    if check.new_examples == 0:
        return None  # new_examples says so
    if p.too_small:
        return False, (
            f"{p.examples} {check.unit} make {p.steps} optimizer step(s); {p.trains} needs at least "
            f"{p.min_steps} (about {p.examples_needed()} {check.unit} at {p.batch} per step): waiting for "
            "more (the loop's min_steps sets the floor)"
        )
    return True, "next cycle: " + describe(p)


@_builtin("holdout")
def holdout(check: LoopCheck) -> tuple[bool, str] | None:
    """Enough held-out examples to evaluate a candidate on: ``min_holdout``, and the gate's own minimum
    when the cycle is gated (a cycle whose gate cannot decide is not started)."""
    need, gate_min = holdout_needed(check.settings, check.loop, _gated())
    if not need:
        return None
    limit = check.loop.eval_limit or check.settings.evaluation.limit
    if limit is not None and limit < gate_min:
        return False, (
            f"eval_limit {limit} is below the gate's min_examples {gate_min}: the gate could never "
            "decide; raise eval_limit or lower gate.min_examples"
        )
    reason = f"{check.holdout}/{need} held-out examples"
    if gate_min >= need and gate_min > (check.loop.triggers.min_holdout or 0):
        reason += f" (the gate decides on at least {gate_min})"
    return check.holdout >= need, reason


@_builtin("groups")
def groups(check: LoopCheck) -> tuple[bool, str] | None:
    """DPO/GRPO: groups with enough members to pair or compare."""
    loop = check.loop
    if loop.algorithm not in ("dpo", "grpo"):
        return None
    k = (
        loop.dataset.get("min_group_size")
        or loop.triggers.min_group_size
        or (check.settings.datasets.grpo_min_group_size if loop.algorithm == "grpo" else 2)
    )
    what = "pairs from groups" if loop.algorithm == "dpo" else "groups"
    return check.new_examples > 0, f"{check.new_examples} {what} with at least {k} members"


@_builtin("reward_variance")
def reward_variance(check: LoopCheck) -> tuple[bool, str] | None:
    """GRPO: some group's rewards differ. SFT ranked by reward: the rewards differ at all."""
    counts = check.counts
    if check.loop.algorithm == "grpo":
        return (
            counts.varied > 0,
            f"{counts.varied}/{counts.examples} groups have rewards that differ "
            "(GRPO learns nothing from equal ones)",
        )
    # Only meaningful when the selection ranks by reward; teacher traces may all be unscored.
    rewards = counts.rewards or []
    if (
        check.loop.algorithm == "sft"
        and len(rewards) >= 2
        and check.loop.dataset.get("top_fraction") is not None
    ):
        var = statistics.pvariance(rewards)
        return var > 0, f"reward variance {var:.4f}"
    return None


@_builtin("epochs")
def epochs(check: LoopCheck) -> tuple[bool, str] | None:
    """A cycle of ``train.max_steps`` steps must not pass over its new examples more than
    ``triggers.max_epochs`` times: it waits for enough of them (or for a smaller ``max_steps``)."""
    loop, cap, n = check.loop, check.loop.triggers.max_epochs, check.new_examples
    planned = loop.planned_epochs(n) if cap else None
    if planned is None or cap is None:
        return None
    steps = loop.train["max_steps"]
    if planned <= cap:
        return True, f"{steps} training steps over {n} {check.unit}: {planned:.1f} epochs (at most {cap:g})"
    needed = loop.examples_for(cap)
    return False, (
        f"{steps} training steps over {n} {check.unit} would be {planned:.1f} epochs (more than "
        f"triggers.max_epochs = {cap:g}): waiting for {needed} {check.unit}, or lower train.max_steps"
    )


@_builtin("disk")
def disk(check: LoopCheck) -> tuple[bool, str]:
    """Free space in the data dir (``min_free_disk_mb``)."""
    floor = check.loop.triggers.min_free_disk_mb
    free_mb = shutil.disk_usage(_existing(Path(check.settings.data_dir))).free // (1 << 20)
    return free_mb >= floor, f"{free_mb} MiB free in the data dir (floor {floor})"


@_builtin("base_model")
def base_model(check: LoopCheck) -> tuple[bool, str]:
    """The base model is on disk (a prepared name, an HF folder or a GGUF file)."""
    from learnloop.models.prepared import resolve_base_model

    base = base_model_of(check.settings, check.loop)
    try:
        resolve_base_model(base, check.settings.data_dir)
    except LearnloopError as exc:
        return False, str(exc)
    return True, f"base model {base} present"


@_builtin("after_failure")
def after_failure(check: LoopCheck) -> tuple[bool, str] | None:
    """After failed cycles, wait as a retried job would: longer after each failure in a row."""
    failures, failed_at = check.failures
    if not failures or failed_at is None:
        return None
    # A cycle that failed on the same data (a guardrail, a bad config) would fail again at once.
    cfg = check.settings.daemon
    wait = min(cfg.retry_backoff * 2 ** (failures - 1), cfg.retry_backoff_max)
    until = failed_at + dt.timedelta(seconds=wait)
    if check.now < until:
        return False, f"{failures} cycle(s) failed in a row; the next may start at {until:%H:%M:%S} UTC"
    return True, f"{failures} cycle(s) failed in a row; backoff of {wait:.0f} s over"


@_builtin("backoff")
def backoff(check: LoopCheck) -> tuple[bool, str] | None:
    """After cycles that improved nothing, or while the served version sits at its evaluated ceiling,
    wait longer each time (``backoff`` doubling up to ``backoff_max``); a reward drop or a new scenario
    wakes the loop (``learnloop loops run`` always does: it skips the checks)."""
    t = check.loop.triggers
    if t.backoff is None or check.new_examples == 0:
        return None
    quiet, last_end, why = check.quiet
    ceiling = at_ceiling(check)
    if not quiet and ceiling is None:
        return None
    rounds = quiet + (1 if ceiling else 0)
    wait = min(t.backoff * 2 ** (rounds - 1), t.backoff_max)
    start = last_end or check.last_cycle_at
    until = start + dt.timedelta(seconds=wait) if start else None
    what = []
    if quiet:
        what.append(f"{quiet} cycle(s) in a row improved nothing ({', '.join(why[:3])})")
    if ceiling:
        what.append(ceiling)
    wake = _wake(check)
    check.notes["backoff"] = {
        "quiet_cycles": quiet,
        "why": why,
        "ceiling": ceiling,
        "wait_s": wait,
        "max_s": t.backoff_max,
        "until": until.isoformat() if until else None,
        "woken_by": wake,
    }
    if wake:
        return True, f"backoff ({'; '.join(what)}) woken by {wake}"
    if until is not None and check.now >= until:
        return True, f"backoff of {wait:.0f} s over ({'; '.join(what)})"
    when = f"may start at {until:%Y-%m-%d %H:%M:%S} UTC" if until else "waits"
    return False, (
        f"backing off: {'; '.join(what)}; the next cycle {when} (wait {wait:.0f} s, doubling up to "
        f"{t.backoff_max:.0f} s); a reward drop, a new scenario or `learnloop loops run "
        f"{check.loop.name}` wakes it"
    )


def at_ceiling(check: LoopCheck) -> str | None:
    """Why the served version counts as at its ceiling (evaluated at or above ``ceiling`` and its live
    reward not below it by more than the drop margin), or None."""
    t = check.loop.triggers
    if t.ceiling is None:
        return None
    vid, level, rewards = served_level(check)
    if level is None or level < t.ceiling:
        return None
    live = ""
    if len(rewards) >= t.reward_min_samples:
        mean = sum(rewards) / len(rewards)
        if mean < t.ceiling - (t.reward_drop or 0.05):
            return None  # the live reward fell off the ceiling: learning may help again
        live = f"; live {mean:.3f} over {len(rewards)}"
    return f"served {vid} sits at its evaluated ceiling ({level:.3f} >= {t.ceiling:g}{live})"


def _wake(check: LoopCheck) -> str | None:
    """What ends a backoff early: a reward drop, or a scenario the loop's selection never had before."""
    drop = reward_drop(check)
    if drop:
        return drop
    if check.loop.scenario is not None or check.since is None:
        return None
    where = []
    if check.loop.sources:
        where.append(Trajectory.source.in_([Source(x) for x in check.loop.sources]))
    with check.db.read_session() as s:
        new = set(
            s.scalars(
                select(Trajectory.scenario)
                .where(*where, Trajectory.created_at >= check.since, Trajectory.scenario.is_not(None))
                .distinct()
            )
        )
        if not new:
            return None
        old = set(
            s.scalars(
                select(Trajectory.scenario)
                .where(*where, Trajectory.created_at < check.since, Trajectory.scenario.in_(sorted(new)))
                .distinct()
            )
        )
    fresh = sorted(new - old)
    return f"new scenario(s) in the traffic: {', '.join(fresh[:5])}" if fresh else None


def _gated() -> bool:
    """Whether cycles are evaluated and gated (the registry and evaluation stages are installed)."""
    return all(
        importlib.util.find_spec(m) is not None for m in ("learnloop.registry", "learnloop.evaluation")
    )


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
