"""Readiness checks: what must hold before a loop's cycle may start. Each is a plain function of a
:class:`~learnloop.daemon.checks.LoopCheck` that returns ``(ok, reason)``, or None when it does not
apply to the loop; the reason is what ``learnloop loops status`` shows.

The built-ins below run for every loop, in this order; register your own with
:func:`readiness_check` (see ``daemon/checks.py``).
"""

from __future__ import annotations

import datetime as dt
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from learnloop.config.loops import base_model_of
from learnloop.daemon.checks import LoopCheck, Registry
from learnloop.errors import LearnloopError

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


@_builtin("holdout")
def holdout(check: LoopCheck) -> tuple[bool, str] | None:
    """Enough held-out examples to evaluate a candidate on (``min_holdout``)."""
    wanted = check.loop.triggers.min_holdout
    if not wanted:
        return None
    return check.holdout >= wanted, f"{check.holdout}/{wanted} held-out examples"


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


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
