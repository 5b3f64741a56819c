"""The promotion gate: a pure function of an evaluation's metrics and the ``[gate]`` policy.

It passes a candidate only when the lower bound of the paired 95% interval of its improvement
clears the margin, no guardrail regresses past its allowance (JSON validity, refusal rate, p95
latency, any one scenario's score on the gated metric), and enough held-out examples back the
numbers. Every check adds a reason, passed or not.

The improvement is that of ``policy.metric``: ``reward`` (the combined reward under scoring's one
explicit-first rule: the app's verifier decides, generic heuristics only refine), ``judge_win_rate``
(above one half), or the name of one aspect (a reward function such as a user's ``order_json``).

Against a teacher (``metrics["against"] == "teacher"``: a student meant to replace the provider it
learnt from) the question is non-inferiority instead: the lower bound must clear ``-teacher_margin``
(the judge's win rate ``0.5 - teacher_margin``), each scenario may fall ``teacher_margin`` further than
``max_scenario_regression``, and latency is reported, not gated (a small local model and a remote
provider are not measured on the same wire).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from learnloop.config import GatePolicy

PROMOTE, REJECT, INCONCLUSIVE = "promote", "reject", "inconclusive"
REWARD, JUDGE_WIN_RATE = "reward", "judge_win_rate"


@dataclass
class GateVerdict:
    passed: bool
    verdict: str  # promote, reject or inconclusive
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def policy_for(settings: Any, loop: str | None = None) -> GatePolicy:
    """The policy a version of ``loop`` is gated by: ``[gate]``,
    overridden by that loop's ``gate = {...}``."""
    policy = settings.gate
    for entry in getattr(settings, "loops", None) or []:
        if getattr(entry, "name", None) == loop and getattr(entry, "gate", None):
            return GatePolicy(**{**policy.model_dump(), **entry.gate})
    return policy


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.4f}"


def gate(metrics: Mapping[str, Any], policy: GatePolicy) -> GateVerdict:
    """Decide whether the evaluated candidate may replace its baseline."""
    overall = metrics.get("overall") or {}
    n = int(overall.get("n") or 0)
    if n < policy.min_examples:
        return GateVerdict(
            False,
            INCONCLUSIVE,
            [f"only {n} held-out examples; the policy needs at least {policy.min_examples}"],
        )

    failures: list[str] = []
    notes: list[str] = []
    teacher = metrics.get("against") == "teacher"
    margin = -policy.teacher_margin if teacher else policy.margin
    if teacher:
        notes.append(f"against the teacher: non-inferiority, margin {policy.teacher_margin}")
    if policy.metric == REWARD:
        ci = overall.get("reward_diff_ci") or [None, None]
        low = ci[0]
        what = f"mean reward difference {_f(overall.get('reward_diff'))} (95% CI {_f(ci[0])} .. {_f(ci[1])})"
        threshold = margin
    elif policy.metric != JUDGE_WIN_RATE:
        aspect = (overall.get("aspects") or {}).get(policy.metric) or {}
        if not aspect.get("n"):
            known = ", ".join(sorted(overall.get("aspects") or {})) or "none"
            return GateVerdict(
                False,
                INCONCLUSIVE,
                [
                    f"the policy gates on the aspect {policy.metric!r}, but no example has it on both "
                    f"sides (aspects scored: {known}); is its reward module in [scoring] reward_modules?"
                ],
            )
        ci = aspect.get("diff_ci") or [None, None]
        low = ci[0]
        what = (
            f"{policy.metric} difference {_f(aspect.get('diff'))} (95% CI {_f(ci[0])} .. {_f(ci[1])}, "
            f"{aspect['n']} paired examples)"
        )
        threshold = margin
    else:
        judge = overall.get("judge") or {}
        if not judge.get("n"):
            return GateVerdict(
                False,
                INCONCLUSIVE,
                ["the policy gates on the judge's win rate, but the evaluation has no judge verdicts"],
            )
        ci = judge.get("win_rate_ci") or [None, None]
        low = ci[0]
        what = f"judge win rate {judge.get('win_rate'):.3f} (95% CI {ci[0]:.3f} .. {ci[1]:.3f})"
        threshold = 0.5 + margin
    if low is None or not low > threshold:
        failures.append(f"{what}: the lower bound does not clear {threshold:+.4f}")
    else:
        notes.append(f"{what}: the lower bound clears {threshold:+.4f}")

    jc, jb = overall.get("json_valid_candidate"), overall.get("json_valid_baseline")
    if jc is not None and jb is not None:
        drop = jb - jc
        (failures if drop > policy.max_json_validity_drop else notes).append(
            f"JSON validity {jc:.3f} vs {jb:.3f} (allowed drop {policy.max_json_validity_drop})"
        )
    rc, rb = overall.get("refusal_rate_candidate"), overall.get("refusal_rate_baseline")
    if rc is not None and rb is not None:
        (failures if rc - rb > policy.max_refusal_increase else notes).append(
            f"refusal rate {rc:.3f} vs {rb:.3f} (allowed rise {policy.max_refusal_increase})"
        )
    lc, lb = overall.get("latency_p95_candidate_ms"), overall.get("latency_p95_baseline_ms")
    if lc is not None and lb and teacher:
        notes.append(f"p95 latency {lc:.0f} ms vs the teacher's {lb:.0f} ms (reported, not gated)")
    elif lc is not None and lb:
        (
            failures
            if lc > policy.max_p95_latency_ratio * lb and lc - lb > policy.latency_slack_ms
            else notes
        ).append(f"p95 latency {lc:.0f} ms vs {lb:.0f} ms (allowed ratio {policy.max_p95_latency_ratio})")
    cc, cb = overall.get("cost_per_1k_requests_candidate"), overall.get("cost_per_1k_requests_baseline")
    if cc is not None and cb is not None:
        notes.append(f"cost per 1,000 requests {cc:.4g} vs {cb:.4g} (reported, not gated)")
    allowed = policy.max_scenario_regression + (policy.teacher_margin if teacher else 0.0)
    for name, sc in sorted((metrics.get("scenarios") or {}).items()):
        label, diff, n = _scenario_diff(sc, policy.metric)
        if n < policy.min_scenario_examples or diff is None:
            continue
        if diff < -allowed:
            failures.append(
                f"scenario {name!r} regresses: mean {label} {diff:+.4f} over {n} examples "
                f"(allowed {-allowed:+.4f})"
            )
    if failures:
        return GateVerdict(False, REJECT, failures + notes)
    return GateVerdict(True, PROMOTE, notes)


def _scenario_diff(sc: Mapping[str, Any], metric: str) -> tuple[str, float | None, int]:
    """(label, paired difference, examples) of one scenario on the metric the gate compares
    (the reward for ``reward`` and ``judge_win_rate``, whose scenarios carry no judge interval)."""
    if metric in (REWARD, JUDGE_WIN_RATE):
        return "reward", sc.get("reward_diff"), int(sc.get("n") or 0)
    aspect = (sc.get("aspects") or {}).get(metric) or {}
    return metric, aspect.get("diff"), int(aspect.get("n") or 0)
