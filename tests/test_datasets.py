"""Dataset builders on real SQLite and PostgreSQL: filters, holdout, margins,
corrections, dedup, lengths, hashes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from helpers import chat
from learnloop.config import Settings
from learnloop.datasets import (
    ApproxTokenCounter,
    Deduplicator,
    HFTokenCounter,
    build_dataset,
    dataset_item_ids,
    export_dataset,
    get_dataset,
    length_report,
    list_datasets,
    read_records,
)
from learnloop.errors import ConfigError, NotFound, ValidationFailed
from learnloop.store import Database, ingest, parse_batch
from learnloop.store.models import Dataset, Split, Trajectory
from learnloop.store.trajectories import trajectory_row

NOW = dt.datetime.now(dt.UTC)


def add(db: Database, *items: dict[str, Any]) -> None:
    """Ingest trajectories; ``reward`` becomes an env score,
    ``holdout`` moves the row to the held-out split."""
    trajectories = []
    for it in items:
        t = {k: v for k, v in it.items() if k not in ("reward", "holdout")}
        if it.get("reward") is not None:
            t["scores"] = {"quality": it["reward"]}
        trajectories.append(t)
    with db.session() as s:
        ingest(s, parse_batch({"trajectories": trajectories}), holdout_fraction=0.0)
        held = [it["id"] for it in items if it.get("holdout")]
        if held:
            s.execute(update(Trajectory).where(Trajectory.id.in_(held)).values(split=Split.holdout))


def traj(tid: str, prompt: str, answer: str, reward: float | None = None, **kw: Any) -> dict[str, Any]:
    return {"id": tid, "messages": chat(prompt, answer), "reward": reward, **kw}


def ids_of(info: Any) -> list[str]:
    return [json.loads(line)["messages"][-1]["content"] for line in Path(info.path).read_text().splitlines()]


def test_sft_filters_rewards_teacher_and_holdout(db: Database, settings: Settings) -> None:
    old = (NOW - dt.timedelta(hours=48)).isoformat()
    add(
        db,
        traj("good", "capital of france?", "paris is the capital", 0.9, scenario="geo", tags=["prod", "eu"]),
        traj("ok", "capital of spain?", "madrid", 0.6, scenario="geo", tags=["prod"]),
        traj("bad", "capital of italy?", "london", 0.1, scenario="geo", tags=["prod", "eu"]),
        traj("unscored", "capital of peru?", "lima"),
        traj("teach", "explain gravity", "mass attracts mass", source="teacher"),
        traj("old", "capital of chile?", "santiago is it", 0.95, created_at=old, window_id="w1"),
        traj("math", "2+2?", "four", 0.8, scenario="math", window_id="w1"),
        traj("held", "capital of japan?", "tokyo", 0.99, holdout=True),
    )
    info = build_dataset(db, "sft", {"min_reward": 0.5}, settings=settings)
    answers = set(ids_of(info))
    assert answers == {"paris is the capital", "madrid", "mass attracts mass", "santiago is it", "four"}
    assert info.stats["funnel"]["below_min_reward"] == 1 and info.stats["funnel"]["unscored"] == 1
    assert info.stats["funnel"]["teacher"] == 1
    with db.read_session() as s:
        item_ids = dataset_item_ids(s, info.id)
    assert "held" not in item_ids and set(item_ids) == {"good", "ok", "teach", "old", "math"}

    # Teacher traces can be held to the reward bar; a source filter keeps only them (pure distillation).
    strict = build_dataset(db, "sft", {"min_reward": 0.5, "teacher_bypass_reward": False}, settings=settings)
    assert "mass attracts mass" not in ids_of(strict)
    distil = build_dataset(db, "sft", {"sources": ["teacher"]}, settings=settings)
    assert ids_of(distil) == ["mass attracts mass"]

    # Top fraction ranks scored non-teacher rows: best 2 of {0.9, 0.6, 0.1, 0.95, 0.8, holdout excluded}.
    top = build_dataset(db, "sft", {"top_fraction": 0.4, "teacher_bypass_reward": False}, settings=settings)
    assert set(ids_of(top)) == {"santiago is it", "paris is the capital"}

    recent = build_dataset(db, "sft", {"lookback_hours": 24, "scenario": "geo"}, settings=settings)
    assert set(ids_of(recent)) == {"paris is the capital", "madrid", "london"}
    assert recent.filters["since"] is not None and recent.filters["lookback_hours"] is None
    for built in (recent, top, distil):  # recorded filters rebuild the same content
        assert build_dataset(db, "sft", built.filters, settings=settings).id == built.id
    tagged = build_dataset(db, "sft", {"tags": ["prod", "eu"]}, settings=settings)
    assert set(ids_of(tagged)) == {"paris is the capital", "london"}
    window = build_dataset(db, "sft", {"window_id": "w1"}, settings=settings)
    assert set(ids_of(window)) == {"santiago is it", "four"}

    holdout = build_dataset(db, "holdout", settings=settings)
    assert build_dataset(db, "holdout", holdout.filters, settings=settings).id == holdout.id
    records = list(read_records(holdout.path))
    assert [r["id"] for r in records] == ["held"] and holdout.split == "holdout"
    assert records[0]["prompt"] == [{"role": "user", "content": "capital of japan?"}]
    assert records[0]["completion"][0]["content"] == "tokyo" and records[0]["reward"] == pytest.approx(0.99)


def test_dpo_pairs_respect_margin_and_groups(db: Database, settings: Settings) -> None:
    add(
        db,
        traj("a1", "name a color", "blue", 0.9),
        traj("a2", "name a color", "sky", 0.5),
        traj("a3", "name a color", "azure", 0.45),
        traj("a4", "name a color", "dog", 0.1),
        traj("b1", "name a fruit", "apple", 0.7),  # alone with its prompt: no pair
        traj("c1", "say hi", "hi", 0.8, holdout=True),
        traj("c2", "say hi", "bye", 0.0, holdout=True),
        traj("d1", "count to 3", "1 2 3", 0.9, group_id="g"),
        traj("d2", "count to 3", "1 3", 0.2, group_id="g"),
        traj(
            "d3", "count to 4", "1 2 3 4", 0.1, group_id="g"
        ),  # same group, other prompt: never paired with d1
    )
    info = build_dataset(db, "dpo", {"min_margin": 0.3}, settings=settings)
    records = list(read_records(info.path))
    with db.read_session() as s:
        item_ids = dataset_item_ids(s, info.id)
    assert item_ids == ["d1>d2", "a1>a4"] or sorted(item_ids) == sorted(["d1>d2", "a1>a4"])
    pair = records[item_ids.index("a1>a4")]
    assert pair["prompt"] == [{"role": "user", "content": "name a color"}]
    assert pair["chosen"] == [{"role": "assistant", "content": "blue"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "dog"}]
    assert info.stats["funnel"]["pairs_below_margin"] >= 1  # a2/a3 differ by only 0.05
    assert info.stats["rewards"]["min"] == pytest.approx(0.7)

    loose = build_dataset(db, "dpo", {"min_margin": 0.01, "max_pairs_per_group": 5}, settings=settings)
    with db.read_session() as s:
        assert set(dataset_item_ids(s, loose.id)) == {"a1>a4", "a2>a3", "d1>d2"}

    by_group = build_dataset(db, "dpo", {"min_margin": 0.3, "group_by": "group"}, settings=settings)
    with db.read_session() as s:
        assert dataset_item_ids(s, by_group.id) == ["d1>d2"]


def test_dpo_correction_pairs_and_sft_corrections(db: Database, settings: Settings) -> None:
    add(db, traj("t1", "what is 2+2?", "five", 0.2), traj("t2", "hello", "hi there", 0.9))
    late = {
        "feedback": [
            {
                "trajectory_id": "t1",
                "thumbs": "down",
                "correction": "older fix",
                "created_at": (NOW - dt.timedelta(hours=1)).isoformat(),
            },
            {
                "trajectory_id": "t1",
                "correction": {"role": "assistant", "content": "four"},
                "created_at": NOW.isoformat(),
            },
            {"trajectory_id": "t2", "rating": 5},
        ]
    }
    with db.session() as s:
        ingest(s, parse_batch(late))
    info = build_dataset(db, "dpo", settings=settings)
    records = list(read_records(info.path))
    assert len(records) == 1 and info.stats["funnel"]["correction_pairs"] == 1
    assert records[0] == {
        "prompt": [{"role": "user", "content": "what is 2+2?"}],
        "chosen": [{"role": "assistant", "content": "four"}],
        "rejected": [{"role": "assistant", "content": "five"}],
    }
    no_corr = {"include_corrections": False}
    with pytest.raises(ValidationFailed, match="No dpo examples"):
        build_dataset(db, "dpo", no_corr, settings=settings)

    sft = build_dataset(db, "sft", {"min_reward": 0.5}, settings=settings)
    assert sorted(ids_of(sft)) == ["four", "hi there"]  # the corrected answer replaces the low-scored one


def test_grpo_groups_with_rewards_and_advantages(db: Database, settings: Settings) -> None:
    add(
        db,
        *[
            traj(f"g{i}", "solve x+1=3", f"x={i}", r, group_id="task-1")
            for i, r in enumerate([1.0, 0.0, 0.5])
        ],
        traj("lonely", "solve y", "y=1", 1.0, group_id="task-2"),
        traj("same1", "pick", "a", 0.5, group_id="task-3"),
        traj("same2", "pick", "b", 0.5, group_id="task-3"),
        traj("unscored", "solve x+1=3", "x=9", None, group_id="task-1"),
        traj("h1", "held", "a", 1.0, group_id="task-4", holdout=True),
        traj("h2", "held", "b", 0.0, group_id="task-4", holdout=True),
    )
    info = build_dataset(db, "grpo", {"min_group_size": 2}, settings=settings)
    records = list(read_records(info.path))
    assert len(records) == 2
    task1 = next(r for r in records if r["prompt"][0]["content"] == "solve x+1=3")
    assert task1["rewards"] == [1.0, 0.0, 0.5]
    assert [c[0]["content"] for c in task1["completions"]] == ["x=0", "x=1", "x=2"]
    groups = info.stats["groups"]
    assert groups["groups"] == 2 and groups["zero_variance_groups"] == 1
    adv = next(g for g in groups["items"] if g["size"] == 3)["advantages"]
    assert sum(adv) == pytest.approx(0.0, abs=1e-6) and adv[0] > adv[2] > adv[1]
    assert info.stats["funnel"]["in_small_groups"] == 1 and info.stats["funnel"]["unscored"] == 1

    k3 = build_dataset(db, "grpo", {"min_group_size": 3}, settings=settings)
    assert k3.count == 1


def test_exact_and_near_duplicates_removed(db: Database, settings: Settings) -> None:
    long = (
        "the service restarts the worker when the queue is full and logs the event with its timestamp and "
        "id; then it waits for the worker to report healthy, replays the requests that were in flight, "
        "and only after that accepts new work from the load balancer, "
        "which it tells through the readiness endpoint"
    )
    add(
        db,
        traj("d1", "explain restarts", long, 0.9),
        traj("d2", "Explain   restarts", long.upper(), 0.9),  # same text after normalising case/space
        traj("d3", "explain restarts", long.replace("timestamp", "time"), 0.9),  # one word changed
        traj(
            "d4", "explain restarts", "a completely different answer about caching layers and ttl values", 0.9
        ),
    )
    info = build_dataset(db, "sft", settings=settings)
    with db.read_session() as s:
        assert dataset_item_ids(s, info.id) == ["d1", "d4"]
    dup = info.stats["duplicates"]
    assert dup["exact"] == 1 and dup["near"] == 1
    assert {(d["id"], d["duplicate_of"], d["kind"]) for d in dup["items"]} == {
        ("d2", "d1", "exact"),
        ("d3", "d1", "near"),
    }
    kept = build_dataset(db, "sft", {"dedup": False}, settings=settings)
    assert kept.count == 4


def test_deduplicator_thresholds() -> None:
    d = Deduplicator(0.85)
    base = " ".join(f"word{i}" for i in range(60))
    assert d.check("a", base) is None
    assert d.check("b", base.replace("word30", "other")) is not None  # 3 of 58 grams differ: J ~ 0.9
    assert d.check("c", " ".join(f"word{i}" for i in range(30, 90))) is None  # half overlap: J ~ 1/3
    assert d.check("d", "short text") is None and d.check("e", "Short  TEXT")[0] == "exact"


def test_deduplicator_remembers_thousands() -> None:
    # Enough examples to grow the compact tables several times; every repeat must still name its original.
    d = Deduplicator(0.85)
    texts = [
        f"ticket {i} about {i % 7} printers and {i * 31 % 101} queues, opened by user {i}"
        for i in range(3000)
    ]
    assert all(d.check(f"k{i}", t) is None for i, t in enumerate(texts))
    assert [d.check(f"r{i}", t.upper()) for i, t in enumerate(texts[::97])] == [
        ("exact", f"k{i}", 1.0) for i in range(0, 3000, 97)
    ]


def test_deduplicator_batch_matches_one_by_one() -> None:
    # The writer checks batches; a batch must judge each item as the one-by-one check would,
    # earlier items of the same batch included.
    base = [
        f"order {i} shipped to {i * 7 % 13} warehouses with {i % 5} parcels and tracking id {i}"
        for i in range(300)
    ]
    texts = base + [t.upper() for t in base[::10]] + [t + " indeed" for t in base[::7]] + ["", "a b", "a b"]
    items = [(f"i{k}", t) for k, t in enumerate(texts)]
    one = Deduplicator(0.85)
    expected = [one.check(i, t) for i, t in items]
    many = Deduplicator(0.85)
    got = many.check_many(items[:100]) + many.check_many(items[100:])
    assert got == expected
    assert sum(v is not None and v[0] == "exact" for v in got) >= len(base[::10]) + 1
    assert any(v is not None and v[0] == "near" for v in got)


def test_dedup_words_match_the_regex() -> None:
    import random

    from learnloop.datasets.dedup import _WORD, _words

    rng = random.Random(0)
    alphabet = [chr(c) for c in range(128)] + ["é", "ß", "Ж", "中"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert _words(text) == _WORD.findall(text.lower())


def test_length_report_with_model_tokenizer(db: Database, settings: Settings, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    add(db, *[traj(f"t{i}", "count", " ".join(["one two three"] * (i + 1)), 1.0) for i in range(20)])
    settings = settings.model_copy(
        update={"datasets": settings.datasets.model_copy(update={"max_length": 48})}
    )
    info = build_dataset(db, "sft", {"dedup": False}, settings=settings, tokenizer=tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = sorted(
        len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
        for r in read_records(info.path)
    )
    length = info.stats["length"]
    assert length["tokenizer"].startswith("hf:") and length["max"] == expected[-1]
    assert length["p50"] == expected[9] and length["p95"] == expected[18]
    over = [n - 48 for n in expected if n > 48]
    assert length["truncated"] == len(over) > 0 and length["truncated_tokens_max"] == max(over)
    assert length["suggested_max_length"] >= length["p99"] and length["suggested_max_length"] % 64 == 0
    assert "advice" in length and length["longest"][0]["tokens"] == expected[-1]

    approx = build_dataset(
        db,
        "sft",
        {"dedup": False},
        settings=settings.model_copy(
            update={"datasets": settings.datasets.model_copy(update={"max_length": 4096})}
        ),
    )
    # Same content: the same record, its length report redone for the new tokenizer and max length.
    assert approx.id == info.id and approx.reused
    assert (
        approx.stats["length"]["tokenizer"].startswith("approx") and approx.stats["length"]["truncated"] == 0
    )
    with db.read_session() as s:
        assert get_dataset(s, info.id).stats["length"]["max_length"] == 4096
    with pytest.raises(ConfigError, match="does not exist"):
        HFTokenCounter(tiny_model_dir / "missing")


def test_length_report_percentiles() -> None:
    r = length_report(list(range(1, 101)), 90, [f"i{n}" for n in range(1, 101)])
    assert (r["p50"], r["p95"], r["p99"], r["max"]) == (50, 95, 99, 100)
    assert r["truncated"] == 10 and r["truncated_tokens_max"] == 10 and r["truncated_tokens_total"] == 55
    assert r["suggested_max_length"] == 128 and r["longest"][0] == {"item": "i100", "tokens": 100}
    assert ApproxTokenCounter().count([[{"role": "user", "content": "x" * 40}]]) == [2 + 10 + 4]


def test_content_hash_stable_and_build_is_idempotent(db: Database, settings: Settings) -> None:
    add(db, traj("t1", "q1", "a1", 0.9), traj("t2", "q2", "a2", 0.8))
    first = build_dataset(db, "sft", settings=settings)
    second = build_dataset(db, "sft", {"lookback_hours": 1}, settings=settings)  # other filters, same content
    assert second.id == first.id and second.reused and second.content_hash == first.content_hash
    with db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Dataset)) == 1
    Path(first.path).unlink()  # a lost file is restored by the next identical build
    again = build_dataset(db, "sft", settings=settings)
    assert again.id == first.id and Path(again.path).read_bytes()
    add(db, traj("t3", "q3", "a3", 0.7))
    third = build_dataset(db, "sft", settings=settings)
    assert third.id != first.id and third.content_hash != first.content_hash and not third.reused
    with db.read_session() as s:
        listed = list_datasets(s)
        assert [d.id for d in listed] == [third.id, first.id]
        assert get_dataset(s, third.id).count == 3
        with pytest.raises(NotFound, match="No dataset"):
            get_dataset(s, 999)


def test_malformed_rows_are_reported_not_dropped(db: Database, settings: Settings) -> None:
    add(db, traj("fine", "q", "a", 0.9))
    bad = {
        "no-answer": [{"role": "user", "content": "q?"}],
        "ends-user": chat("q", "a") + [{"role": "user", "content": "and?"}],
        "parts": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": "a cat"},
        ],
        "robot": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "a"}],
        "empty": chat("q", "   "),
    }
    with db.session() as s:
        for tid, messages in bad.items():
            # Rows written by older versions or other tools skip today's ingest validation.
            row = trajectory_row(
                parse_batch({"trajectories": [{"id": tid, "messages": chat("x", "y")}]})["trajectories"][0],
                "default",
                0.0,
                NOW,
            )
            s.add(Trajectory(**(row | {"messages": messages, "prompt_hash": tid})))
    info = build_dataset(db, "sft", settings=settings)
    assert info.count == 1
    rejected = {r["id"]: r["reason"] for r in info.stats["rejected"]["items"]}
    assert set(rejected) == set(bad) and info.stats["rejected"]["count"] == 5
    assert "no assistant message" in rejected["no-answer"]
    assert "ends with a 'user' message" in rejected["ends-user"]
    assert "content parts" in rejected["parts"]
    assert "role" in rejected["robot"] and "empty" in rejected["empty"]


def test_replay_mixes_in_earlier_examples(db: Database, settings: Settings) -> None:
    add(
        db,
        *[
            traj(f"old{i}", f"old question {i}", f"old answer number {i}", 0.9, window_id="w1")
            for i in range(10)
        ],
    )
    first = build_dataset(db, "sft", {"window_id": "w1"}, settings=settings)
    add(
        db,
        *[
            traj(f"new{i}", f"new question {i}", f"new answer number {i}", 0.9, window_id="w2")
            for i in range(6)
        ],
    )
    mixed = build_dataset(db, "sft", {"window_id": "w2", "replay_fraction": 0.25}, settings=settings)
    with db.read_session() as s:
        ids = dataset_item_ids(s, mixed.id)
    assert mixed.stats["replay"]["wanted"] == 2 and mixed.stats["replay"]["added"] == 2
    assert sum(i.startswith("new") for i in ids) == 6 and sum(i.startswith("old") for i in ids) == 2
    assert len(list(read_records(mixed.path))) == 8
    again = build_dataset(db, "sft", {"window_id": "w2", "replay_fraction": 0.25}, settings=settings)
    assert again.id == mixed.id  # the replay choice is deterministic
    assert first.count == 10


def test_bad_requests_are_clear(db: Database, settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match="Unknown dataset kind"):
        build_dataset(db, "ppo", settings=settings)
    with pytest.raises(ValidationFailed, match="filters.min_margin"):
        build_dataset(db, "dpo", {"min_margin": -1}, settings=settings)
    with pytest.raises(ValidationFailed, match="filters.bogus"):
        build_dataset(db, "sft", {"bogus": 1}, settings=settings)
    with pytest.raises(ValidationFailed, match="filters.min_margin: does not apply to sft") as err:
        build_dataset(
            db, "sft", {"min_margin": 0.2, "group_by": "group", "min_reward": 0.1}, settings=settings
        )
    assert [loc for loc, _ in err.value.problems] == ["filters.min_margin", "filters.group_by"]
    with pytest.raises(ValidationFailed, match="No sft examples"):
        build_dataset(db, "sft", settings=settings)
    assert not [p for p in (settings.data_dir / "datasets").iterdir()]  # no stray temp file
    add(db, traj("t1", "q", "a", 0.9))
    info = build_dataset(db, "sft", settings=settings, out=tmp_path / "copy.jsonl")
    assert (tmp_path / "copy.jsonl").read_bytes() == Path(info.path).read_bytes()
    Path(info.path).unlink()
    with db.read_session() as s:
        with pytest.raises(NotFound, match="Rebuild it"):
            export_dataset(s, info.id, tmp_path / "x.jsonl")


def test_groups_spanning_chunks_build_the_same_content(db: Database, settings: Settings) -> None:
    # 3 answers per prompt over 30 rows: with chunks of 10 rows, groups straddle chunk boundaries.
    add(
        db,
        *[
            traj(f"t{i:02d}", f"prompt {i // 3}", f"answer {i}", (i % 3) / 2, group_id=f"g{i // 3}")
            for i in range(30)
        ],
    )
    small = settings.model_copy(update={"datasets": settings.datasets.model_copy(update={"chunk_size": 10})})
    for kind in ("dpo", "grpo", "sft"):
        chunked = build_dataset(db, kind, {"min_margin": 0.5} if kind == "dpo" else {}, settings=small)
        whole_settings = settings.model_copy(update={"data_dir": settings.data_dir / "other"})
        whole = build_dataset(db, kind, {"min_margin": 0.5} if kind == "dpo" else {}, settings=whole_settings)
        assert whole.content_hash == chunked.content_hash and whole.id == chunked.id
        assert chunked.count == {"dpo": 10, "grpo": 10, "sft": 30}[kind]


@pytest.mark.postgres
def test_same_rows_hash_the_same_on_sqlite_and_postgresql(
    sqlite_db: Database, pg_url: str, settings: Settings
) -> None:
    from conftest import _reset_pg

    pg = Database(pg_url)
    pg.upgrade()
    _reset_pg(pg)
    try:
        rows = [
            traj(
                f"t{i}",
                f"prompt {i // 2}",
                f"answer {i} ünïcode",
                i / 7,
                group_id=f"g{i // 2}",
                tags=["b", "a"],
                metadata={"z": 1, "a": [1.5, None]},
            )
            for i in range(8)
        ]
        hashes = {}
        for name, database in (("sqlite", sqlite_db), ("postgresql", pg)):
            add(database, *rows)
            own = settings.model_copy(update={"data_dir": settings.data_dir / name})
            hashes[name] = [
                build_dataset(database, kind, settings=own).content_hash for kind in ("sft", "dpo", "grpo")
            ]
        assert hashes["sqlite"] == hashes["postgresql"]
    finally:
        pg.dispose()


def test_dpo_from_feedback_scored_by_the_scoring_stage(db: Database, settings: Settings) -> None:
    from learnloop.scoring import apply_feedback

    add(
        db,
        {
            "id": "up",
            "messages": chat("summarise the ticket", "printer jammed; replaced roller"),
            "feedback": {"thumbs": 1},
        },
        {
            "id": "down",
            "messages": chat("summarise the ticket", "it is a ticket"),
            "feedback": {"thumbs": -1},
        },
    )
    apply_feedback(db, settings.scoring)
    info = build_dataset(db, "dpo", {"min_margin": 0.1}, settings=settings)
    with db.read_session() as s:
        assert dataset_item_ids(s, info.id) == ["up>down"]
    record = next(read_records(info.path))
    assert record["chosen"][0]["content"] == "printer jammed; replaced roller"
