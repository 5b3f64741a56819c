"""A loop check counts what changed since the last one, and its counts equal a dry build of the
whole selection after every kind of change (new rows, late scores, corrections, the window's end
moving, a new cycle, another config), on both databases."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from daemon_support import add, loop_settings
from sqlalchemy import func, insert, select

from learnloop.config import Settings
from learnloop.daemon import loops, tally
from learnloop.datasets.builders import BUILDERS, BuildReport
from learnloop.datasets.filters import parse_filters
from learnloop.store import ingest, parse_batch
from learnloop.store.db import Database
from learnloop.store.models import Job, JobKind, JobState, LoopState, LoopTally, Split, Trajectory, utcnow
from learnloop.store.trajectories import prompt_hash


def _rows(prompt: int, rewards: list[float | None], *, tag: str = "", **kw: Any) -> list[dict[str, Any]]:
    """Answers to one prompt (one GRPO group), each with its reward (None: unscored)."""
    return [
        {
            "id": f"p{prompt}-{tag}{i}",
            "messages": [
                {"role": "user", "content": f"question {prompt}"},
                {"role": "assistant", "content": f"answer {i} {tag} to {prompt}"},
            ],
            "source": "production",
            "scenario": "qa",
            "group": f"g{prompt}",
            "reward": r,
            **kw,
        }
        for i, r in enumerate(rewards)
    ]


def _late(db: Database, **batch: Any) -> None:
    with db.session() as s:
        ingest(s, parse_batch(batch), holdout_fraction=0.0)


def _dry(db: Database, s: Settings, loop: Any, since: dt.datetime | None, until: dt.datetime) -> tuple:
    """The oracle: the builder run over the whole selection, as the cycle's build would."""
    f = parse_filters(tally.dataset_filters(loop, since, until)).resolved(loop.algorithm, s.datasets)
    with db.read_session() as sess:
        items = list(BUILDERS[loop.algorithm](sess, f, s.scoring, BuildReport(), 100))
    varied = sum(1 for i in items if loop.algorithm == "grpo" and len(set(i.record["rewards"])) > 1)
    return len(items), varied


def _stored(db: Database, name: str, part: str = "train") -> tuple[int, int, int, int]:
    """(totals kept with the loop, sums of the per-prompt rows): they must agree."""
    with db.read_session() as s:
        state = (s.get(LoopState, name).tally or {})[part]
        e, v = s.execute(
            select(
                func.coalesce(func.sum(LoopTally.examples), 0), func.coalesce(func.sum(LoopTally.varied), 0)
            ).where(LoopTally.loop == name, LoopTally.part == part)
        ).one()
    return state["examples"], state["varied"], e, v


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[bool, int]]]:
    """Every builder run the tally makes: (restricted to some prompts, examples it gave)."""
    seen: list[tuple[bool, int]] = []
    real = tally._build

    def spy(*args: Any, **kw: Any) -> Iterator[Any]:
        items = list(real(*args, **kw))
        prompts = args[4] if len(args) > 4 else kw.get("prompts")
        seen.append((prompts is not None, len(items)))
        yield from items

    monkeypatch.setattr(tally, "_build", spy)
    yield seen


@pytest.mark.parametrize(
    "algorithm,dataset",
    [("sft", {"min_reward": 0.5}), ("dpo", {}), ("grpo", {})],
)
def test_counts_equal_a_dry_build_through_every_change(
    db: Database,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    builds: list[tuple[bool, int]],
    algorithm: str,
    dataset: dict[str, Any],
) -> None:
    # No look-back overlap: rows written before a check must not be re-counted after it.
    monkeypatch.setattr(tally, "LAG", dt.timedelta(0))
    s = loop_settings(settings, algorithm=algorithm, sources=["production"], dataset=dataset)
    loop = s.loops[0]
    loops.ensure_row(db, loop.name)
    for p in range(12):
        add(db, _rows(p, [0.1, 0.4, 0.8, 0.95]))
    add(db, _rows(20, [0.1, None]))  # one answer not scored yet
    add(db, _rows(21, [0.2, 0.3]))

    def check(now: dt.datetime | None = None) -> tuple[int, int]:
        now = now or utcnow()
        counts = tally.count_examples(db, s, loop, None, now)
        assert (counts.examples, counts.varied) == _dry(db, s, loop, None, now)
        e, v, rows_e, rows_v = _stored(db, loop.name)
        assert (e, v) == (rows_e, rows_v) == (counts.examples, counts.varied)
        return counts.examples, counts.varied

    first = check()
    assert first[0] > 0 and builds == [(False, first[0])]  # the first check builds everything once

    builds.clear()
    add(db, _rows(30, [0.2, 0.9]) + _rows(3, [0.7], tag="new"))
    after_rows = check()
    assert after_rows != first
    assert builds and all(restricted for restricted, _ in builds)
    # Only the two prompts that changed were rebuilt, not the thirteen others.
    assert sum(n for _, n in builds) <= 5 < after_rows[0]

    builds.clear()
    _late(db, scores=[{"trajectory_id": "p20-1", "name": "quality", "value": 0.9}])
    after_score = check()
    assert after_score != after_rows and all(r for r, _ in builds)

    builds.clear()
    _late(db, feedback=[{"trajectory_id": "p21-0", "correction": "the right answer to 21"}])
    after_fix = check()
    if algorithm != "grpo":  # GRPO groups take no corrections
        assert after_fix[0] == after_score[0] + 1
    # A score or correction id is trusted as seen one check later (its mark must be older than the
    # look-back); after that, a check with nothing new rebuilds nothing.
    assert check() == after_fix
    nothing = len(builds)
    assert check() == after_fix and len(builds) == nothing

    # A row stamped an hour ahead enters the window when its end passes it, and leaves when it goes back.
    later = utcnow() + dt.timedelta(hours=1)
    add(db, _rows(40, [0.3, 0.9], created_at=later.isoformat()))
    assert check() == after_fix
    ahead = check(later + dt.timedelta(hours=1))
    assert ahead[0] > after_fix[0]
    assert check() == after_fix

    # Another selection (a stricter reward bar, or DPO margin) starts over, and still agrees.
    stricter = loop_settings(
        settings,
        algorithm=algorithm,
        sources=["production"],
        dataset={"min_reward": 0.9} if algorithm == "sft" else {"min_group_size": 3},
    )
    counts = tally.count_examples(db, stricter, stricter.loops[0], None, utcnow())
    assert (counts.examples, counts.varied) == _dry(db, stricter, stricter.loops[0], None, utcnow())
    assert counts.examples < after_fix[0]


def test_a_new_cycle_counts_from_its_start(db: Database, settings: Settings) -> None:
    s = loop_settings(settings, sources=["production"])
    loop = s.loops[0]
    loops.ensure_row(db, loop.name)
    add(db, _rows(1, [0.5, 0.6]))
    assert loops.check_loop(db, s, loop).new_examples == 2
    cut = utcnow()
    with db.session() as sess:  # a cycle up to `cut` succeeded
        sess.add(
            Job(
                kind=JobKind.train,
                state=JobState.succeeded,
                loop=loop.name,
                payload={"until": cut.isoformat()},
                finished_at=cut,
            )
        )
    add(db, _rows(2, [0.5], created_at=(cut + dt.timedelta(seconds=1)).isoformat()))
    later = cut + dt.timedelta(seconds=2)
    decision = loops.check_loop(db, s, loop, now=later)
    assert decision.new_examples == 1 == _dry(db, s, loop, cut, later)[0]
    assert decision.since == cut.isoformat()


def test_held_out_examples_are_counted_as_they_arrive(
    db: Database, settings: Settings, builds: list[tuple[bool, int]]
) -> None:
    s = loop_settings(settings, sources=["production"], triggers={"min_holdout": 5}, gate={"min_examples": 5})
    loop = s.loops[0]
    loops.ensure_row(db, loop.name)
    add(db, [{**r, "holdout": True} for r in _rows(1, [0.5, None, 0.2])] + _rows(2, [0.5]))
    # A held-out prompt without an answer still counts (evaluation generates the answer).
    add(
        db,
        [
            {
                "id": "bare",
                "messages": [{"role": "user", "content": "hi"}],
                "source": "production",
                "scenario": "qa",
                "holdout": True,
            }
        ],
    )
    assert "4/5 held-out examples" in loops.check_loop(db, s, loop).reasons
    builds.clear()
    add(db, [{**r, "holdout": True} for r in _rows(3, [0.1, 0.2], tag="h")])
    assert "6/5 held-out examples" in loops.check_loop(db, s, loop).reasons
    assert tally.count_holdout(db, s, loop) == 6
    assert all(restricted for restricted, _ in builds)


def test_a_row_written_just_before_a_check_but_committed_after_it_is_counted(
    db: Database, settings: Settings
) -> None:
    s = loop_settings(settings, sources=["production"])
    loop = s.loops[0]
    loops.ensure_row(db, loop.name)
    add(db, _rows(1, [0.5]))
    assert tally.count_examples(db, s, loop, None, utcnow()).examples == 1
    with db.read_session() as sess:
        checked = dt.datetime.fromisoformat(sess.get(LoopState, loop.name).tally["train"]["checked_at"])
    # A writer stamped this row 30 s before that check and committed only now.
    row = _rows(2, [None])[0]
    with db.session() as sess:
        sess.execute(
            insert(Trajectory),
            [
                {
                    "id": "late",
                    "idempotency_key": "late",
                    "messages": row["messages"],
                    "source": "production",
                    "scenario": "qa",
                    "prompt_hash": prompt_hash(row["messages"]),
                    "split": Split.train,
                    "created_at": checked - dt.timedelta(seconds=30),
                    "ingested_at": checked - dt.timedelta(seconds=30),
                }
            ],
        )
    assert tally.count_examples(db, s, loop, None, utcnow()).examples == 2


def test_a_check_that_lost_a_race_keeps_the_other_checks_counts(
    db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tally, "LAG", dt.timedelta(0))
    s = loop_settings(settings, algorithm="grpo", sources=["production"])
    loop = s.loops[0]
    loops.ensure_row(db, loop.name)
    add(db, _rows(1, [0.1, 0.9]))
    tally.count_examples(db, s, loop, None, utcnow())
    add(db, _rows(2, [0.1, 0.9]) + _rows(1, [0.5], tag="x"))
    real_store = tally._Tally._store
    raced = []

    def store_after_another_check(self: Any, *args: Any, **kw: Any) -> None:
        if not raced:  # another daemon checks and stores between this check's read and its write
            raced.append(None)
            raced[0] = tally.count_examples(db, s, loop, None, utcnow())
        real_store(self, *args, **kw)

    monkeypatch.setattr(tally._Tally, "_store", store_after_another_check)
    counts = tally.count_examples(db, s, loop, None, utcnow())
    assert (counts.examples, counts.varied) == (raced[0].examples, raced[0].varied) == (2, 2)
    e, v, rows_e, rows_v = _stored(db, loop.name)
    assert (e, v) == (rows_e, rows_v) == (2, 2)
    monkeypatch.setattr(tally._Tally, "_store", real_store)
    add(db, _rows(3, [0.2, 0.4]))
    assert tally.count_examples(db, s, loop, None, utcnow()).examples == 3


@pytest.mark.parametrize(
    "dataset", [{"top_fraction": 0.5}, {"lookback_hours": 24}], ids=["top_fraction", "lookback"]
)
def test_selections_that_span_prompts_are_counted_dry(
    db: Database, settings: Settings, builds: list[tuple[bool, int]], dataset: dict[str, Any]
) -> None:
    s = loop_settings(settings, sources=["production"], dataset=dataset)
    loop = s.loops[0]
    loops.ensure_row(db, loop.name)
    add(db, _rows(1, [0.1, 0.4, 0.8, 0.95]) + _rows(2, [0.3, 0.6]))
    now = utcnow()
    assert tally.count_examples(db, s, loop, None, now).examples == _dry(db, s, loop, None, now)[0]
    with db.read_session() as sess:
        assert not (sess.get(LoopState, loop.name).tally or {})
        assert sess.scalar(select(func.count()).select_from(LoopTally)) == 0


def test_a_loop_never_checked_by_the_daemon_keeps_no_tally(db: Database, settings: Settings) -> None:
    s = loop_settings(settings, sources=["production"])
    add(db, _rows(1, [0.5, 0.6]))
    assert loops.check_loop(db, s, s.loops[0]).new_examples == 2
    assert loops.status(db, s)[0]["state"] == "new"
    with db.read_session() as sess:
        assert sess.scalar(select(func.count()).select_from(LoopTally)) == 0


def test_the_count_is_taken_before_duplicates_are_removed(db: Database, settings: Settings) -> None:
    from learnloop.datasets import build_dataset

    s = loop_settings(settings, sources=["production"])
    loop = s.loops[0]
    loops.ensure_row(db, loop.name)
    rows = _rows(1, [0.5, 0.6])
    add(db, rows + [{**r, "id": r["id"] + "-again"} for r in rows])  # the same answers twice
    now = utcnow()
    assert loops.check_loop(db, s, loop, now=now).new_examples == 4
    built = build_dataset(db, "sft", tally.dataset_filters(loop, None, now), settings=s)
    assert built.count == 2 and built.stats["duplicates"]["exact"] == 2
