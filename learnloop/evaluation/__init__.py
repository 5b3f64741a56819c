"""Evaluation: candidate vs baseline on the held-out split, through the serving backend; the promotion gate.

Public surface::

    evaluate(db, settings, candidate="v0003", baseline="serving", scenario=None, backend=None,
             limit=None) -> int
    gate(metrics, policy) -> GateVerdict(passed, verdict, reasons)     # pure; policy = settings.gate
    get_evaluation(db, id) / list_evaluations(db) / compare_evaluations(db, a, b)
"""

from learnloop.config import GatePolicy
from learnloop.evaluation.gate import INCONCLUSIVE, PROMOTE, REJECT, GateVerdict, gate, policy_for
from learnloop.evaluation.reports import (
    compare_evaluations,
    get_evaluation,
    list_evaluations,
    resolve_evaluation,
)
from learnloop.evaluation.run import build_metrics, evaluate

__all__ = [
    "INCONCLUSIVE",
    "PROMOTE",
    "REJECT",
    "GatePolicy",
    "GateVerdict",
    "build_metrics",
    "compare_evaluations",
    "evaluate",
    "gate",
    "get_evaluation",
    "list_evaluations",
    "policy_for",
    "resolve_evaluation",
]
