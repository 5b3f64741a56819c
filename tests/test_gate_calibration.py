"""The gate's error rates, by simulation through the same interval and gate code evaluations use.

- A/A: candidate and baseline rewards drawn from one distribution; the gate must promote <= 5%.
- Power: a candidate whose true judge win rate is 0.55 (5 points over a coin flip).

Each scenario is 500 simulated evaluations bootstrapped in one vectorised scipy call.
"""

from __future__ import annotations

import numpy as np
import pytest

from learnloop.config import GatePolicy
from learnloop.evaluation import gate
from learnloop.evaluation.stats import paired_ci

RUNS = 500
RESAMPLES = 999  # the evaluations themselves use 9999; 999 keeps 500 x 900-item runs to seconds


def _promote_rate(per_item: np.ndarray, *, judge: bool, seed: int) -> float:
    low, high = paired_ci(per_item, n_resamples=RESAMPLES, seed=seed)
    n = per_item.shape[-1]
    passed = 0
    for k in range(per_item.shape[0]):
        mean = float(per_item[k].mean())
        if judge:
            overall = {
                "n": n,
                "judge": {"n": n, "win_rate": mean, "win_rate_ci": [float(low[k]), float(high[k])]},
            }
            policy = GatePolicy(metric="judge_win_rate")
        else:
            overall = {"n": n, "reward_diff": mean, "reward_diff_ci": [float(low[k]), float(high[k])]}
            policy = GatePolicy()
        passed += gate({"overall": overall}, policy).passed
    return passed / per_item.shape[0]


def win_outcomes(rng: np.random.Generator, n: int, *, win: float, tie: float) -> np.ndarray:
    """Per-pair judge outcomes (1 win, 0.5 tie, 0 loss) for RUNS evaluations of n items."""
    u = rng.random((RUNS, n))
    return np.where(u < win, 1.0, np.where(u < win + tie, 0.5, 0.0))


def test_aa_gates_promote_at_most_5_percent() -> None:
    rng = np.random.default_rng(1)
    # Rewards as the heuristics give them: mostly 1, some partial, some 0 — the same for both sides.
    values, probs = np.array([0.0, 0.5, 0.75, 1.0]), np.array([0.15, 0.15, 0.2, 0.5])
    cand = rng.choice(values, size=(RUNS, 200), p=probs)
    base = rng.choice(values, size=(RUNS, 200), p=probs)
    rate = _promote_rate(cand - base, judge=False, seed=2)
    assert rate <= 0.05, rate
    # The same for the judge's win rate: a coin flip with ties.
    rate_judge = _promote_rate(win_outcomes(rng, 200, win=0.35, tie=0.30), judge=True, seed=3)
    assert rate_judge <= 0.05, rate_judge


@pytest.mark.parametrize(
    ("n", "tie", "at_least"),
    [
        # At 400 items the gate catches it about 54% of the time without ties (70% with 40% ties):
        # the README states the held-out sizes that reach 80%.
        (900, 0.0, 0.80),
        (600, 0.4, 0.80),  # judge verdicts that flip with the order count as ties, which narrows the interval
    ],
)
def test_five_point_win_rate_gain_is_caught(n: int, tie: float, at_least: float) -> None:
    rng = np.random.default_rng(n + int(tie * 10))
    win = (1 - tie) / 2 + 0.05  # win rate = win + tie / 2 = 0.55
    rate = _promote_rate(win_outcomes(rng, n, win=win, tie=tie), judge=True, seed=4)
    assert rate >= at_least, rate


if __name__ == "__main__":  # the figures the README quotes: .venv/bin/python tests/test_gate_calibration.py
    rng = np.random.default_rng(1)
    values, probs = np.array([0.0, 0.5, 0.75, 1.0]), np.array([0.15, 0.15, 0.2, 0.5])
    diffs = rng.choice(values, size=(RUNS, 200), p=probs) - rng.choice(values, size=(RUNS, 200), p=probs)
    print(f"A/A reward, 200 items: promoted {_promote_rate(diffs, judge=False, seed=2):.1%}")
    print(
        "A/A judge, 200 items: promoted "
        f"{_promote_rate(win_outcomes(rng, 200, win=0.35, tie=0.30), judge=True, seed=3):.1%}"
    )
    for n, tie in [(400, 0.0), (400, 0.4), (600, 0.4), (900, 0.0)]:
        rate = _promote_rate(win_outcomes(rng, n, win=(1 - tie) / 2 + 0.05, tie=tie), judge=True, seed=4)
        print(f"win rate 0.55, {n} items, {tie:.0%} ties: caught {rate:.1%}")
