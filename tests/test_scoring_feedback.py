"""Feedback signals turned into one `feedback` score per trajectory, with configurable weights."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from helpers import chat
from learnloop.config import FeedbackWeights, ScoringSettings
from learnloop.scoring import apply_feedback, combined_rewards
from learnloop.store import Database, ingest, parse_batch
from learnloop.store.models import Score, ScoreSource


def _store(db: Database, batch: dict) -> None:
    with db.session() as s:
        ingest(s, parse_batch(batch))


def _feedback_scores(db: Database) -> dict[str, list[Score]]:
    with db.read_session() as s:
        rows = s.scalars(select(Score).where(Score.name == "feedback").order_by(Score.id)).all()
    out: dict[str, list[Score]] = {}
    for r in rows:
        out.setdefault(r.trajectory_id, []).append(r)
    return out


def _traj(tid: str, **feedback) -> dict:
    item = {"id": tid, "messages": chat("q", "a")}
    if feedback:
        item["feedback"] = feedback
    return item


def test_signals_map_onto_signed_range(db: Database) -> None:
    _store(
        db,
        {
            "trajectories": [
                _traj("best", rating=5),
                _traj("worst", rating=1),
                _traj("mid", rating=3),
                _traj("up", thumbs="up"),
                _traj("down", thumbs="down"),
                _traj("ok", success=True),
                _traj("corrected", thumbs="up", correction="the right answer"),
                _traj("comment_only", comment="meh"),
                _traj("none"),
            ]
        },
    )
    report = apply_feedback(db, ScoringSettings())
    assert report.trajectories_with_feedback == 8 and report.scored == 7 and report.no_signal == 1
    values = {tid: rows[-1].value for tid, rows in _feedback_scores(db).items()}
    assert values == pytest.approx(
        {
            "best": 1.0,
            "worst": -1.0,
            "mid": 0.0,
            "up": 1.0,
            "down": -1.0,
            "ok": 1.0,
            "corrected": 0.0,
        }
    )
    row = _feedback_scores(db)["corrected"][0]
    assert row.source == ScoreSource.human and "correction" in row.rationale and "thumbs" in row.rationale


def test_unit_range_custom_scale_and_weights(db: Database) -> None:
    _store(
        db,
        {
            "trajectories": [
                _traj("r", rating=7),
                _traj("mix", rating=10, success=False),
                _traj("clamped", rating=42),
            ]
        },
    )
    cfg = ScoringSettings(
        rating_min=0,
        rating_max=10,
        feedback_range="unit",
        feedback_weights=FeedbackWeights(rating=3.0, success=1.0),
    )
    apply_feedback(db, cfg)
    values = {tid: rows[-1].value for tid, rows in _feedback_scores(db).items()}
    assert values == pytest.approx({"r": 0.7, "mix": 0.75, "clamped": 1.0})


def test_idempotent_and_new_feedback_or_settings_rescore(db: Database) -> None:
    _store(db, {"trajectories": [_traj("t", thumbs="up"), _traj("u", rating=4)]})
    assert apply_feedback(db).scored == 2
    again = apply_feedback(db)
    assert again.scored == 0 and again.already_scored == 2
    assert len(_feedback_scores(db)["t"]) == 1

    # A second, negative signal arrives later: a new score covering both rows replaces the old in use.
    _store(db, {"feedback": [{"trajectory_id": "t", "thumbs": "down", "author": "bob"}]})
    third = apply_feedback(db)
    assert third.scored == 1 and third.trajectory_ids == ["t"]
    rows = _feedback_scores(db)["t"]
    assert [r.value for r in rows] == [1.0, 0.0] and rows[-1].author == "bob"
    with db.read_session() as s:
        assert combined_rewards(s, ["t"]) == {"t": 0.0}

    # Changing the weights re-derives every feedback reward once.
    cfg = ScoringSettings(feedback_weights=FeedbackWeights(thumbs=2.0))
    assert apply_feedback(db, cfg).scored == 2
    assert apply_feedback(db, cfg).scored == 0


def test_rating_scale_must_be_increasing(settings) -> None:  # fixture isolates env and cwd
    from learnloop.config import load_settings
    from learnloop.errors import ConfigError

    with pytest.raises(ConfigError, match="rating_max"):
        load_settings(scoring={"rating_min": 5, "rating_max": 5})
    with pytest.raises(ConfigError, match="feedback_weights"):
        load_settings(scoring={"feedback_weights": {"stars": 1}})
