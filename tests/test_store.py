from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from helpers import chat
from learnloop.errors import NotFound, ValidationFailed
from learnloop.store import Database, downgrade, ingest, parse_batch, stats
from learnloop.store.db import current_revision, table_names
from learnloop.store.models import Feedback, Score, Split, Trajectory
from learnloop.store.trajectories import assign_split, prompt_hash


def _batch(n: int, **extra) -> dict:
    return {"trajectories": [{"id": f"t{i}", "messages": chat(f"q{i}", f"a{i}"), **extra} for i in range(n)]}


def test_migrations_upgrade_downgrade_roundtrip(db: Database) -> None:
    assert "trajectories" in table_names(db.engine)
    assert current_revision(db.engine) is not None
    with db.session() as s:
        ingest(s, parse_batch(_batch(2)))
    downgrade(db.engine, "base")
    assert "trajectories" not in table_names(db.engine)
    assert current_revision(db.engine) is None
    db.upgrade()
    assert {"trajectories", "scores", "feedback", "jobs", "model_versions"} <= table_names(db.engine)


def test_ingest_is_idempotent(db: Database) -> None:
    with db.session() as s:
        first = ingest(s, parse_batch(_batch(3, scores={"ok": 1.0}, feedback={"rating": 4})))
    with db.session() as s:
        second = ingest(s, parse_batch(_batch(3, scores={"ok": 1.0}, feedback={"rating": 4})))
    assert len(first.inserted) == 3 and first.duplicates == []
    assert second.inserted == [] and sorted(second.duplicates) == ["t0", "t1", "t2"]
    with db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Trajectory)) == 3
        assert s.scalar(select(func.count()).select_from(Score)) == 3
        assert s.scalar(select(func.count()).select_from(Feedback)) == 3


def test_batch_with_unknown_feedback_target_stores_nothing(db: Database) -> None:
    batch = _batch(2) | {"feedback": [{"trajectory_id": "nope", "rating": 1}]}
    with pytest.raises(NotFound, match="nope"):
        with db.session() as s:
            ingest(s, parse_batch(batch))
    with db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Trajectory)) == 0


def test_late_feedback_and_retry_are_stored_once(db: Database) -> None:
    with db.session() as s:
        ingest(s, parse_batch(_batch(1)))
    late = {"feedback": [{"trajectory_id": "t0", "thumbs": "down", "correction": "better"}]}
    for _ in range(2):
        with db.session() as s:
            ingest(s, parse_batch(late))
    with db.read_session() as s:
        rows = s.scalars(select(Feedback)).all()
        assert len(rows) == 1 and rows[0].thumbs == -1 and rows[0].correction == "better"


def test_validation_names_the_bad_field() -> None:
    bad = {"trajectories": [{"messages": [{"role": "user", "content": "x"}]}, {"messages": [{"role": "robot"}]}]}
    with pytest.raises(ValidationFailed) as err:
        parse_batch(bad)
    locs = [loc for loc, _ in err.value.problems]
    assert any(loc.startswith("trajectories.1.messages.0.role") for loc in locs), locs
    with pytest.raises(ValidationFailed, match="tool_call_id"):
        parse_batch({"trajectories": [{"messages": [{"role": "tool", "content": "42"}]}]})


def test_tool_calls_round_trip(db: Database) -> None:
    msgs = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
        {"role": "assistant", "content": "It rains."},
    ]
    with db.session() as s:
        ingest(s, parse_batch({"trajectories": [{"id": "x", "messages": msgs, "tools": [{"type": "function"}]}]}))
    with db.read_session() as s:
        row = s.get(Trajectory, "x")
        assert row.messages[1]["tool_calls"][0]["function"]["name"] == "weather"
        assert row.messages[2]["tool_call_id"] == "c1"
        assert row.created_at.tzinfo is not None


def test_split_is_frozen_by_prompt_hash(db: Database) -> None:
    same_prompt = [{"id": f"s{i}", "messages": chat("same question", f"answer {i}")} for i in range(5)]
    with db.session() as s:
        ingest(s, parse_batch({"trajectories": same_prompt}), holdout_fraction=0.5)
    with db.read_session() as s:
        splits = set(s.scalars(select(Trajectory.split)).all())
    assert len(splits) == 1
    h = prompt_hash(chat("same question", "x"))
    assert splits == {assign_split(h, 0.5)}
    keys = [f"k{i}" for i in range(2000)]
    share = sum(assign_split(k, 0.1) is Split.holdout for k in keys) / len(keys)
    assert 0.07 < share < 0.13


def test_stats_by_source_scenario_day(db: Database) -> None:
    day1 = dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc).isoformat()
    items = [
        {"messages": chat("a", "b"), "scenario": "math", "created_at": day1},
        {"messages": chat("c", "d"), "scenario": "math", "source": "teacher", "created_at": day1},
        {"messages": chat("e", "f"), "scenario": "code"},
    ]
    with db.session() as s:
        ingest(s, parse_batch({"trajectories": items}))
    with db.read_session() as s:
        out = stats(s)
    assert {r["source"]: r["count"] for r in out["by_source"]} == {"production": 2, "teacher": 1}
    assert out["by_scenario"][0] == {"scenario": "math", "count": 2}
    assert out["by_day"][0] == {"day": "2026-01-01", "count": 2}
