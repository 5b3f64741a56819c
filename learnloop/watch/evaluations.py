"""An evaluation as a row a person reads: named columns (not metric keys), numbers formatted alike so
they align, the gate's reasons kept whole for a fold-out."""

from __future__ import annotations

from typing import Any

# (title, tooltip): the columns of the versions' and a version's evaluation tables, in order.
COLUMNS: list[tuple[str, str]] = [
    ("Examples", "held-out examples both sides answered"),
    ("Reward (candidate)", "mean reward of the candidate's answers"),
    ("Reward (baseline)", "mean reward of what it was compared with (the model in service, or a teacher)"),
    ("Difference [95% CI]", "candidate minus baseline, with its 95% confidence interval"),
    ("Wins / ties / losses", "examples where the candidate's answer scored higher / the same / lower"),
    ("p95 latency", "95th percentile answer time: candidate / baseline"),
]


def _overall(metrics: dict[str, Any]) -> dict[str, Any]:
    overall = metrics.get("overall")
    return overall if isinstance(overall, dict) else metrics


def _f(v: Any, digits: int = 3, signed: bool = False) -> str:
    if not isinstance(v, (int, float)):
        return "–"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _ms(v: Any) -> str:
    return f"{v:,.0f}" if isinstance(v, (int, float)) else "–"


def cells(metrics: dict[str, Any]) -> list[str]:
    """The row's cells under ``COLUMNS`` ("–" where the evaluation did not measure it)."""
    o = _overall(metrics or {})
    ci = o.get("reward_diff_ci") or [metrics.get("reward_diff_low"), metrics.get("reward_diff_high")]
    ci = ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else [None, None]
    diff = _f(o.get("reward_diff"), signed=True)
    if diff != "–" and all(isinstance(x, (int, float)) for x in ci):
        diff += f" [{_f(ci[0], signed=True)}, {_f(ci[1], signed=True)}]"
    wtl = [o.get(k) for k in ("wins", "ties", "losses")]
    lat = (o.get("latency_p95_candidate_ms"), o.get("latency_p95_baseline_ms"))
    return [
        f"{o['n']:,}" if isinstance(o.get("n"), int) else "–",
        _f(o.get("reward_candidate", o.get("reward"))),
        _f(o.get("reward_baseline")),
        diff,
        " / ".join(str(x) for x in wtl)
        if all(isinstance(x, int) for x in wtl)
        else (f"{o['win_rate']:.0%} won" if isinstance(o.get("win_rate"), (int, float)) else "–"),
        f"{_ms(lat[0])} / {_ms(lat[1])} ms" if any(isinstance(x, (int, float)) for x in lat) else "–",
    ]


def rows(evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each evaluation with its ``cells`` (under ``COLUMNS``)."""
    return [{**e, "cells": cells(e.get("metrics") or {})} for e in evaluations]
