"""Datasets for learning without a teacher, on real SQLite and PostgreSQL: KTO records from feedback
alone (thumbs, success, ratings, corrections), and rollout prompts from served traffic (one answer
per prompt is enough). What the builders write is what the training objectives read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import chat
from learnloop.config import Settings
from learnloop.datasets import build_dataset, dataset_item_ids, read_records
from learnloop.errors import ValidationFailed
from learnloop.store import Database, ingest, parse_batch
from training_support import objective_for


def _add(db: Database, *rows: dict[str, Any]) -> None:
    with db.session() as s:
        ingest(s, parse_batch({"trajectories": list(rows)}), holdout_fraction=0.0)


def _served(tid: str, prompt: str, answer: str, **kw: Any) -> dict[str, Any]:
    return {"id": tid, "messages": chat(prompt, answer), "source": "served", "scenario": "tickets", **kw}


def _feedback_rows() -> list[dict[str, Any]]:
    return [
        _served("up", "summarise ticket 1", "printer jammed; replaced roller", feedback={"thumbs": 1}),
        _served("down", "summarise ticket 2", "it is a ticket", feedback={"thumbs": -1}),
        _served("ok", "summarise ticket 3", "screen flickers; cable swapped", feedback={"success": True}),
        _served("fail", "summarise ticket 4", "no idea", feedback={"success": False}),
        _served("stars4", "summarise ticket 5", "vpn drops; renewed cert", feedback={"rating": 4}),
        _served("stars3", "summarise ticket 6", "something about wifi", feedback={"rating": 3}),
        _served(
            "fixed",
            "summarise ticket 7",
            "the user called",
            feedback={"thumbs": -1, "correction": "disk full; cleared logs"},
        ),
        _served("silent", "summarise ticket 8", "no feedback on this one"),
    ]


def test_kto_from_feedback_alone(db: Database, settings: Settings, tiny_model_dir: Path) -> None:
    from learnloop.scoring import apply_feedback
    from learnloop.training.data import load_examples

    _add(db, *_feedback_rows())
    apply_feedback(db, settings.scoring)
    info = build_dataset(db, "kto", {"scenario": "tickets"}, settings=settings)
    with db.read_session() as s:
        ids = dataset_item_ids(s, info.id)
    records = dict(zip(ids, read_records(info.path), strict=True))
    labels = {i: r["label"] for i, r in records.items()}
    # Signed feedback: up/success/4 stars (0.5) are desirable; down/failure/3 stars (0.0) are not.
    # The correction gives two examples: the corrected answer (good) and the answer it replaced (bad).
    fid = next(i for i in ids if i.startswith("fb:"))
    assert labels == {
        "up": True,
        "down": False,
        "ok": True,
        "fail": False,
        "stars4": True,
        "stars3": False,
        fid: True,
        "fixed": False,
    }
    assert records[fid]["completion"] == [{"role": "assistant", "content": "disk full; cleared logs"}]
    assert records[fid]["prompt"] == [{"role": "user", "content": "summarise ticket 7"}]
    assert records["up"]["completion"] == [
        {"role": "assistant", "content": "printer jammed; replaced roller"}
    ]
    funnel = info.stats["funnel"]
    assert funnel["desirable"] == 4 and funnel["undesirable"] == 4 and funnel["unscored"] == 1

    # A neutral band: ratings of 3 (0.0) are neither good nor bad.
    banded = build_dataset(
        db, "kto", {"scenario": "tickets", "max_undesirable_reward": -0.5}, settings=settings
    )
    with db.read_session() as s:
        assert "stars3" not in dataset_item_ids(s, banded.id)
    assert banded.stats["funnel"]["between_bars"] == 1

    # What the builder wrote, the KTO objective reads.
    obj, _ = objective_for(tiny_model_dir, "kto")
    loaded = load_examples(info.path, obj)
    assert len(loaded.examples) == 8 and obj.desirable == 4 and obj.undesirable == 4


def test_kto_filters_are_checked(db: Database, settings: Settings) -> None:
    with pytest.raises(ValidationFailed, match="must be below 'min_reward'"):
        build_dataset(db, "kto", {"min_reward": 0.5, "max_undesirable_reward": 0.5}, settings=settings)
    with pytest.raises(ValidationFailed, match="max_undesirable_reward.*only to kto"):
        build_dataset(db, "sft", {"max_undesirable_reward": 0.0}, settings=settings)


def test_prompts_from_served_traffic_one_record_per_prompt(
    db: Database, settings: Settings, tiny_model_dir: Path
) -> None:
    from learnloop.scoring import apply_feedback

    _add(
        db,
        _served("a1", "extract order 1", "{}", feedback={"thumbs": -1}, tags=["json"]),
        _served("a2", "extract order 1", '{"qty": 2}', feedback={"thumbs": 1}, tags=["json"]),
        _served("b1", "extract order 2", "sure!", metadata={"customer": "c9"}),
        {"id": "t1", "messages": chat("extract order 3", "{}"), "source": "teacher", "scenario": "other"},
    )
    apply_feedback(db, settings.scoring)
    info = build_dataset(db, "prompts", {"scenario": "tickets", "sources": ["served"]}, settings=settings)
    records = {r["prompt"][0]["content"]: r for r in read_records(info.path)}
    assert set(records) == {"extract order 1", "extract order 2"}
    best = records["extract order 1"]
    assert best["id"] == "a2" and best["completion"] == [{"role": "assistant", "content": '{"qty": 2}'}]
    assert best["reward"] == 1.0 and best["scenario"] == "tickets" and best["tags"] == ["json"]
    plain = records["extract order 2"]
    assert "reward" not in plain and plain["metadata"] == {"customer": "c9"}
    assert info.stats["funnel"]["prompts"] == 2 and info.stats["funnel"]["answers"] == 3

    # The rollout objectives read these records: the prompt to answer, the stored answer to keep or not.
    obj, _ = objective_for(
        tiny_model_dir,
        "rft",
        rollout={"rewards": ["json_valid"]},
    )
    lines = Path(info.path).read_text().splitlines()
    prompts = [obj.prepare(json.loads(line), i).data["prompt"] for i, line in enumerate(lines, 1)]
    by_text = {p.messages[0]["content"]: p for p in prompts}
    assert by_text["extract order 1"].given_reward == 1.0 and by_text["extract order 1"].tags == ["json"]
    assert by_text["extract order 2"].given is not None and by_text["extract order 2"].given_reward is None
    assert by_text["extract order 2"].metadata == {"customer": "c9"}
