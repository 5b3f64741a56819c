"""Capture: the SDK apps use to send learnloop their LLM interactions.

    import learnloop

    with learnloop.trajectory(scenario="support", agent="triage") as t:
        t.user("My order is late")
        t.assistant("Sorry! Let me check.", tool_calls=[...])
        t.tool({"status": "shipped"}, tool_call_id="call_1")
        t.reward("resolved", 1.0)
    learnloop.feedback(t.id, thumbs=1)

The app thread only enqueues; a background writer batches, spools to disk first and delivers to
the database (in-process) or a learnloop server (HTTP), whichever ``learnloop.configure()`` chose.
"""

from __future__ import annotations

from typing import Any

from learnloop.capture.client import CaptureClient, configure, get_client, shutdown
from learnloop.capture.openai_wrapper import wrap_openai
from learnloop.capture.recorder import TrajectoryRecorder, current_trajectory, new_id, traced
from learnloop.capture.sampling import (
    DEFAULT_KEEP_RULES,
    Sampler,
    has_error,
    has_feedback,
    has_negative_reward,
)
from learnloop.capture.transports import DatabaseTransport, HttpTransport, Refused, RetryLater, Transport


def trajectory(**fields: Any) -> TrajectoryRecorder:
    """Start recording a trajectory (scenario, agent, tags, group, source, metadata, model, tools,
    messages, id)."""
    return get_client().trajectory(**fields)


def feedback(trajectory_id: str, **signals: Any) -> str | None:
    """Late feedback (rating, thumbs, success, correction, comment, author, metadata) on a recorded
    trajectory."""
    return get_client().feedback(trajectory_id, **signals)


def reward(trajectory_id: str, name: str, value: float, **options: Any) -> None:
    """A late reward (score named ``name``) on a recorded trajectory."""
    get_client().reward(trajectory_id, name, value, **options)


def flush(timeout: float | None = None) -> bool:
    """Block until everything recorded so far is stored, for at most ``timeout`` seconds (default 30);
    False, with the reason logged, when the time ran out or the server refused the token."""
    return get_client().flush(timeout)


__all__ = [
    "CaptureClient",
    "DEFAULT_KEEP_RULES",
    "DatabaseTransport",
    "HttpTransport",
    "Refused",
    "RetryLater",
    "Sampler",
    "Transport",
    "TrajectoryRecorder",
    "configure",
    "current_trajectory",
    "feedback",
    "flush",
    "get_client",
    "has_error",
    "has_feedback",
    "has_negative_reward",
    "new_id",
    "reward",
    "shutdown",
    "traced",
    "trajectory",
    "wrap_openai",
]
