"""The demo's verifier, registered through the public reward API exactly as an app registers its own.

Named in the demo's config (``scoring.reward_modules = ["learnloop.demo.rewards"]``), so the
scoring stage, the evaluation gate and the demo's app all judge answers with the same function.
"""

from __future__ import annotations

from learnloop.demo.task import SCENARIO, check
from learnloop.scoring import reward
from learnloop.scoring.view import TrajectoryView, message_text


@reward("order_json", version="1")
def order_json(t: TrajectoryView) -> float | None:
    """1.0 for the exact order as JSON, partial credit (at most 0.5) for some fields right, 0 otherwise."""
    if t.scenario != SCENARIO or t.final_message is None:
        return None
    users = [m for m in t.prompt if m.get("role") == "user"]
    if not users:
        return None
    return check(message_text(users[-1]), t.completion)
