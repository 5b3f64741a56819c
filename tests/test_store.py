from __future__ import annotations

import datetime as dt
import json

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
    bad = {
        "trajectories": [{"messages": [{"role": "user", "content": "x"}]}, {"messages": [{"role": "robot"}]}]
    }
    with pytest.raises(ValidationFailed) as err:
        parse_batch(bad)
    locs = [loc for loc, _ in err.value.problems]
    assert any(loc.startswith("trajectories.1.messages.0.role") for loc in locs), locs
    with pytest.raises(ValidationFailed, match="tool_call_id") as err:
        parse_batch(
            {
                "trajectories": [
                    {"messages": [{"role": "user", "content": "6 x 7?"}, {"role": "tool", "content": "42"}]}
                ]
            }
        )
    [(loc, msg)] = err.value.problems
    assert loc == "trajectories.0.messages" and msg.startswith("Value error, message 1: a 'tool' message"), (
        loc,
        msg,
    )


def test_tool_calls_round_trip(db: Database) -> None:
    msgs = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
        {"role": "assistant", "content": "It rains."},
    ]
    with db.session() as s:
        ingest(
            s, parse_batch({"trajectories": [{"id": "x", "messages": msgs, "tools": [{"type": "function"}]}]})
        )
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
    day1 = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC).isoformat()
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


# -- the fast trajectory insert stores exactly what the SQLAlchemy path stored -----------------


def _varied_trajectories(prefix: str) -> list[dict]:
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"order": 42}'}}
    return [
        {"id": f"{prefix}0", "messages": chat("plain", "answer")},
        {
            "id": f"{prefix}1",
            "idempotency_key": f"{prefix}-key-1",
            "project": "p2",
            "scenario": "s",
            "group": "g",
            "window": "w",
            "agent": "a",
            "source": "teacher",
            "model": "m",
            "model_version": "v1",
            "messages": [
                {"role": "system", "content": 'sys ünïcode \u2028 "q" \\ \x01'},
                {"role": "user", "content": [{"type": "text", "text": "parts", "n": 1.5}]},
                {"role": "assistant", "content": None, "tool_calls": [call], "extra_key": None},
                {"role": "tool", "tool_call_id": "c1", "content": "{}"},
                {"role": "assistant", "content": "done"},
            ],
            "tools": [{"type": "function", "function": {"name": "lookup"}}],
            "metadata": {"none": None, "nested": {"x": [1, 2.25, True]}, "emoji": "🙂"},
            "tags": ["a", "b"],
            "created_at": "2024-02-03T04:05:06.000007+02:00",
        },
        {"id": f"{prefix}2", "messages": chat("again", "x"), "created_at": "2024-02-03T04:05:06"},
        {"id": f"{prefix}3", "messages": chat("utc", "x"), "created_at": "2024-02-03T04:05:06.5Z"},
    ]


def _stored(db: Database, ids: list[str]) -> list[dict]:
    from sqlalchemy import text

    cols = (
        "project",
        "scenario",
        "group_id",
        "window_id",
        "agent",
        "source",
        "model",
        "model_version",
        "messages",
        "tools",
        "metadata",
        "tags",
        "prompt_hash",
        "split",
        "created_at",
        "ingested_at",
    )
    pg = db.dialect == "postgresql"
    # Text as the database holds it (on PostgreSQL jsonb and timestamptz printed in a fixed zone).
    shown = ", ".join((f'"{c}"::text' if pg else f'"{c}"') + f' AS "{c}"' for c in cols)
    out = []
    json_cols = {"messages", "tools", "metadata", "tags"}
    with db.read_session() as s:
        if pg:
            s.execute(text("SET LOCAL TIME ZONE 'UTC'"))
        for tid in ids:
            row = (
                s.execute(
                    text(f'SELECT {shown}, "id" IS NULL AS nid FROM trajectories WHERE id = :i'), {"i": tid}
                )
                .mappings()
                .one()
            )
            # SQLite keeps JSON as the text it was given: compare it parsed (spacing and \u-escapes differ).
            out.append(
                {c: json.loads(row[c]) if c in json_cols else row[c] for c in cols}
                | (
                    {}
                    if pg
                    else {
                        "types": s.execute(
                            text(
                                "SELECT typeof(tools), typeof(messages), typeof(created_at) "
                                "FROM trajectories WHERE id = :i"
                            ),
                            {"i": tid},
                        ).one()
                    }
                )
            )
    return out


def test_ingest_stores_what_the_orm_insert_stores(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    from learnloop.store import trajectories as tr

    fixed = dt.datetime(2025, 6, 7, 8, 9, 10, 0, tzinfo=dt.UTC)  # microsecond 0: a formatting edge
    monkeypatch.setattr(tr, "utcnow", lambda: fixed)
    with db.session() as s:
        fast = ingest(s, parse_batch({"trajectories": _varied_trajectories("f")}))
    assert sorted(fast.inserted) == ["f0", "f1", "f2", "f3"]

    # The reference: the same rows through SQLAlchemy's own insert.
    slow_batch = _varied_trajectories("r")
    slow_batch[1]["idempotency_key"] = "r-key-1"
    rows = [
        tr.trajectory_row(t, "default", tr.DEFAULT_HOLDOUT_FRACTION, fixed)
        for t in parse_batch({"trajectories": slow_batch})["trajectories"]
    ]
    with db.session() as s:
        s.execute(Trajectory.__table__.insert(), rows)
    assert _stored(db, ["f0", "f1", "f2", "f3"]) == _stored(db, ["r0", "r1", "r2", "r3"])


def test_feedback_and_score_insert_matches_the_orm_insert(db: Database) -> None:
    from sqlalchemy import text

    from learnloop.store import trajectories as tr
    from learnloop.store.models import ScoreSource

    with db.session() as s:
        ingest(
            s, parse_batch({"trajectories": [{"id": t, "messages": chat("q", "a")} for t in ("fast", "ref")]})
        )
    when = dt.datetime(2024, 2, 3, 4, 5, 6, 7, tzinfo=dt.UTC)

    def feedback(tid: str) -> list[dict]:
        return [
            {
                "trajectory_id": tid,
                "idempotency_key": f"{tid}1",
                "rating": 4.5,
                "thumbs": -1,
                "success": True,
                "correction": {"role": "assistant", "content": 'ünï \u2028 "q"'},
                "comment": "c",
                "author": "a",
                "metadata": {"n": [1, 2.25, None]},
                "created_at": when,
            },
            {
                "trajectory_id": tid,
                "idempotency_key": f"{tid}2",
                "rating": None,
                "thumbs": None,
                "success": False,
                "correction": None,
                "comment": None,
                "author": None,
                "metadata": {},
                "created_at": when,
            },
        ]

    def scores(tid: str) -> list[dict]:
        return [
            {
                "trajectory_id": tid,
                "name": "len",
                "value": 0.25,
                "source": ScoreSource.heuristic,
                "version": "v1",
                "author": None,
                "judge_model": "j",
                "rationale": "r",
                "idempotency_key": f"{tid}1",
                "created_at": when,
            },
            {
                "trajectory_id": tid,
                "name": "len",
                "value": -1e-7,
                "source": ScoreSource.env,
                "version": None,
                "author": "x",
                "judge_model": None,
                "rationale": None,
                "idempotency_key": None,
                "created_at": when,
            },
        ]

    with db.session() as s:
        assert len(tr.insert_new(s, Feedback.__table__, feedback("fast"))) == 2
        assert len(tr.insert_new(s, Score.__table__, scores("fast"))) == 2
        s.execute(Feedback.__table__.insert(), feedback("ref"))  # the reference: SQLAlchemy's own insert
        s.execute(Score.__table__.insert(), scores("ref"))

    pg = db.dialect == "postgresql"
    with db.read_session() as s:
        if pg:
            s.execute(text("SET LOCAL TIME ZONE 'UTC'"))
        for table in (Feedback.__table__, Score.__table__):
            cols = [c.name for c in table.c if c.name not in ("id", "trajectory_id", "idempotency_key")]
            shown = ", ".join((f'"{c}"::text' if pg else f'"{c}"') + f' AS "{c}"' for c in cols)
            types = "" if pg else ", " + ", ".join(f'typeof("{c}") AS "t_{c}"' for c in cols)
            # JSON as the database holds it, parsed: SQLite keeps the text it was given (spacing differs).
            rows = {
                tid: [
                    {
                        k: json.loads(v) if k in ("correction", "metadata") and v is not None else v
                        for k, v in r.items()
                    }
                    for r in s.execute(
                        text(
                            f'SELECT {shown}{types} FROM "{table.name}" WHERE trajectory_id = :t ORDER BY id'
                        ),
                        {"t": tid},
                    ).mappings()
                ]
                for tid in ("fast", "ref")
            }
            assert len(rows["fast"]) == 2 and rows["fast"] == rows["ref"], table.name

    with db.session() as s:  # known keys are skipped; a score without a key is always new
        assert len(tr.insert_new(s, Feedback.__table__, feedback("fast"))) == 0
        assert len(tr.insert_new(s, Score.__table__, scores("fast"))) == 1


def test_ingest_reports_only_new_rows(db: Database) -> None:
    batch = {
        "trajectories": [
            {"id": "a", "messages": chat("q", "a")},
            {"id": "b", "idempotency_key": "k", "messages": chat("q", "a")},
            {"id": "a", "messages": chat("q", "a")},
        ]
    }  # an identical repeat (a different one is a 422)
    with db.session() as s:
        first = ingest(s, parse_batch(batch))
    assert first.inserted == ["a", "b"] and first.duplicates == ["a"]
    # Known id, known key under a new id, and one new row.
    again = {
        "trajectories": [
            {"id": "a", "messages": chat("q", "a")},
            {"id": "c", "idempotency_key": "k", "messages": chat("q", "a")},
            {"id": "d", "messages": chat("q", "a")},
        ]
    }
    with db.session() as s:
        second = ingest(s, parse_batch(again))
    assert second.inserted == ["d"] and sorted(second.duplicates) == ["a", "c"]
    with db.read_session() as s:
        assert sorted(s.scalars(select(Trajectory.id)).all()) == ["a", "b", "d"]
        assert s.scalar(select(Trajectory.messages).where(Trajectory.id == "a"))[0]["content"] == "q"


def test_prompt_hash_is_frozen() -> None:
    # The value existing rows' prompt hashes and splits were computed with does not move.
    assert (
        prompt_hash(chat("same question", "x", system='Be brief. ünï "q"\n'))
        == "45684eab2a95c59b5aae4be53ac4b63e"
    )
    # Only the messages before the first assistant turn count.
    assert prompt_hash(chat("q", "one answer")) == prompt_hash(chat("q", "another"))
