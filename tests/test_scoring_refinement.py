"""The refinement penalty: re-asked requests (rephrased) penalise the answer
before them; new requests do not."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from learnloop.config import ScoringSettings
from learnloop.scoring import apply_rewards, combined_rewards
from learnloop.scoring.refinement import is_reask, reasks_within, similarity
from learnloop.store import Database, ingest, parse_batch
from learnloop.store.models import Score

# (first request, the user's next message) where the next message asks for the same thing again.
REPHRASED = [
    ("What's the capital of Australia?", "What is Australia's capital city?"),
    ("How do I reset my password?", "I asked how to reset my password. What are the steps to reset it?"),
    ("Write a haiku about autumn", "Can you write a haiku about autumn? It needs 5-7-5 syllables."),
    (
        "Summarize this article in three bullet points: The economy grew by 3% last year.",
        "Please summarize the article as three bullet points, not a paragraph.",
    ),
    ("Convert 5 miles to kilometers", "how many kilometers is 5 miles?"),
    (
        "List the files in the current directory using bash",
        "what bash command lists the files in the current directory",
    ),
    ("Translate 'good morning' into Spanish", "How do you say good morning in Spanish?"),
    ("Book a table for two at 7pm", "No, that's not what I asked. I need a table for two."),
]
# (first request, the user's next message) where the next message is a genuinely new request.
NEW = [
    ("What's the capital of Australia?", "And what about New Zealand's population?"),
    ("How do I reset my password?", "Thanks! How do I change my email address?"),
    ("Write a haiku about autumn", "Now write a limerick about a cat."),
    ("Write a haiku about autumn", "Now write one about winter."),
    (
        "Summarize this article in three bullet points: The economy grew by 3% last year.",
        "Great. Translate the summary into German.",
    ),
    ("Convert 5 miles to kilometers", "What's the weather in Paris tomorrow?"),
    ("List the files in the current directory using bash", "How do I delete a git branch?"),
    ("Fix the bug in my sort function", "Thanks, that works!"),
]


@pytest.mark.parametrize("request_, again", REPHRASED)
def test_rephrased_requests_are_reasks(request_: str, again: str) -> None:
    assert is_reask(request_, again, 0.6), f"similarity {similarity(request_, again):.2f}"


@pytest.mark.parametrize("request_, again", NEW)
def test_new_requests_are_not(request_: str, again: str) -> None:
    assert not is_reask(request_, again, 0.6), f"similarity {similarity(request_, again):.2f}"


def test_threshold_is_the_knob() -> None:
    a, b = "Convert 5 miles to kilometers", "how many kilometers is 5 miles?"
    assert is_reask(a, b, 0.6) and not is_reask(a, b, 0.95)


def _conv(*turns: str) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


def test_within_a_trajectory_only_after_an_answer() -> None:
    assert (
        reasks_within(
            _conv(
                "What's the capital of Australia?",
                "Sydney.",
                "What is Australia's capital city?",
                "Canberra.",
            )
        )
        == 1
    )
    assert (
        reasks_within(
            _conv(
                "What's the capital of Australia?",
                "Canberra.",
                "And what about New Zealand's population?",
                "5.1 million.",
            )
        )
        == 0
    )


def test_scores_stored_in_trajectories_and_across_a_group(db: Database) -> None:
    conv_reask = _conv(
        "What's the capital of Australia?", "Sydney.", "What is Australia's capital city?", "Canberra."
    )
    conv_new = _conv(
        "What's the capital of Australia?",
        "Canberra.",
        "And what about New Zealand's population?",
        "5.1 million.",
    )
    with db.session() as s:
        ingest(
            s,
            parse_batch(
                {
                    "trajectories": [
                        {"id": "reask", "messages": conv_reask, "scores": {"ok": 1.0}},
                        {"id": "new", "messages": conv_new, "scores": {"ok": 1.0}},
                        # A chat app recording each call: g1's answer missed, so g2 asks again; g3 moves on.
                        {
                            "id": "g1",
                            "group": "chat-7",
                            "messages": _conv("How do I reset my password?", "Use a strong one."),
                            "created_at": "2026-12-01T10:00:00Z",
                            "scores": {"ok": 1.0},
                        },
                        {
                            "id": "g2",
                            "group": "chat-7",
                            "created_at": "2026-12-01T10:01:00Z",
                            "messages": _conv(
                                "How do I reset my password?",
                                "Use a strong one.",
                                "I asked how to reset my password. What are the steps to reset it?",
                                "Click 'Forgot password'.",
                            ),
                        },
                        {
                            "id": "g3",
                            "group": "chat-7",
                            "created_at": "2026-12-01T10:02:00Z",
                            "messages": _conv(
                                "Thanks! How do I change my email address?", "Settings > Account."
                            ),
                        },
                    ]
                }
            ),
        )
    report = apply_rewards(db, ScoringSettings())
    assert report.group_refinements == 1
    with db.read_session() as s:
        flagged = set(s.scalars(select(Score.trajectory_id).where(Score.name == "refinement")))
        rewards = combined_rewards(s, ["reask", "new", "g1"], ScoringSettings())
    assert flagged == {"reask", "g1", "g2"}
    assert rewards["reask"] == pytest.approx(0.5) and rewards["new"] == pytest.approx(1.0)
    assert rewards["g1"] == pytest.approx(0.5)
    # Idempotent: nothing new on a second run.
    assert apply_rewards(db, ScoringSettings()).group_refinements == 0
