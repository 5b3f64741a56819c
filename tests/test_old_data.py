"""Old data keeps working: a database written by the first release (schema 0001) is upgraded to head,
scored, turned into all four dataset kinds and trained on; old-format checkpoints are read or refused
clearly."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from learnloop.config import Settings
from learnloop.datasets import build_dataset
from learnloop.errors import ConfigError
from learnloop.scoring import apply_rewards, combined_rewards
from learnloop.store import Database, downgrade
from learnloop.store.db import current_revision
from learnloop.store.models import JSONType, UTCDateTime
from training_support import config_dict

# The tables as the first release (migration 0001) wrote them: only the columns it had.
TRAJ = sa.table(
    "trajectories",
    *(
        sa.column(c)
        for c in (
            "id",
            "idempotency_key",
            "project",
            "scenario",
            "group_id",
            "window_id",
            "agent",
            "source",
            "model",
            "model_version",
            "prompt_hash",
            "split",
        )
    ),
    sa.column("messages", JSONType),
    sa.column("tools", JSONType),
    sa.column("metadata", JSONType),
    sa.column("tags", JSONType),
    sa.column("created_at", UTCDateTime()),
    sa.column("ingested_at", UTCDateTime()),
)
SCORES = sa.table(
    "scores",
    *(
        sa.column(c)
        for c in (
            "trajectory_id",
            "name",
            "value",
            "source",
            "version",
            "author",
            "judge_model",
            "rationale",
            "idempotency_key",
        )
    ),
    sa.column("created_at", UTCDateTime()),
)
FEEDBACK = sa.table(
    "feedback",
    *(
        sa.column(c)
        for c in ("trajectory_id", "idempotency_key", "rating", "thumbs", "success", "comment", "author")
    ),
    sa.column("correction", JSONType),
    sa.column("metadata", JSONType),
    sa.column("created_at", UTCDateTime()),
)
T0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)


def _first_release_prompt_hash(messages: list[dict]) -> str:
    prompt = []
    for m in messages:
        if m["role"] == "assistant":
            break
        prompt.append({"role": m.get("role"), "content": m.get("content")})
    canonical = json.dumps(prompt, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _fill_like_release_one(db: Database) -> None:
    rows, scores, feedback = [], [], []

    def traj(
        tid: str,
        q: str,
        a: str,
        *,
        ok: float | None,
        group: str | None = None,
        split: str = "train",
        scenario: str = "qa",
        minute: int = 0,
    ) -> None:
        msgs = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": q},
            {"role": "assistant", "content": a},
        ]
        at = T0 + dt.timedelta(minutes=minute)
        rows.append(
            {
                "id": tid,
                "idempotency_key": tid,
                "project": "default",
                "scenario": scenario,
                "group_id": group,
                "window_id": None,
                "agent": None,
                "source": "production",
                "model": "gpt-x",
                "model_version": None,
                "prompt_hash": _first_release_prompt_hash(msgs),
                "split": split,
                "messages": msgs,
                "tools": None,
                "metadata": {"latency_ms": 120},
                "tags": ["v1"],
                "created_at": at,
                "ingested_at": at,
            }
        )
        if ok is not None:  # an env reward, written with no version and no idempotency key (as release 1 did)
            scores.append(
                {
                    "trajectory_id": tid,
                    "name": "ok",
                    "value": ok,
                    "source": "env",
                    "version": None,
                    "author": None,
                    "judge_model": None,
                    "rationale": None,
                    "idempotency_key": None,
                    "created_at": at,
                }
            )

    traj("s1", "What is the capital of France?", "Paris.", ok=1.0, minute=1)
    traj("s2", "What is 7 times 6?", "42.", ok=1.0, minute=2)
    traj("s3", "Name a primary colour.", "Red.", ok=0.9, minute=3)
    for i, (answer, ok) in enumerate(
        [
            ("Blue, because of Rayleigh scattering.", 1.0),
            ("Green.", 0.0),
            ("It is blue.", 0.8),
            ("No idea.", 0.1),
        ]
    ):
        traj(f"g{i}", "Why is the sky blue?", answer, ok=ok, group="sky", minute=10 + i)
    traj("h1", "Spell 'cat' backwards.", "tac", ok=1.0, split="holdout", minute=20)
    traj("h2", "What is 2 + 2?", "4", ok=None, split="holdout", minute=21)
    traj("f1", "Translate 'hello' to French.", "Hola.", ok=None, minute=30)
    scores.append(
        {
            "trajectory_id": "s3",
            "name": "judge",
            "value": 0.7,
            "source": "judge",
            "version": None,
            "author": None,
            "judge_model": "qwen",
            "rationale": "fine",
            "idempotency_key": "judge:s3",
            "created_at": T0,
        }
    )
    feedback.append(
        {
            "trajectory_id": "f1",
            "idempotency_key": "fb-1",
            "rating": None,
            "thumbs": -1,
            "success": None,
            "comment": "wrong language",
            "author": "ann",
            "correction": "Bonjour.",
            "metadata": {},
            "created_at": T0 + dt.timedelta(minutes=31),
        }
    )
    feedback.append(
        {
            "trajectory_id": "s1",
            "idempotency_key": "fb-2",
            "rating": 5.0,
            "thumbs": 1,
            "success": True,
            "comment": None,
            "author": None,
            "correction": None,
            "metadata": {},
            "created_at": T0,
        }
    )
    with db.engine.begin() as conn:
        conn.execute(sa.insert(TRAJ), rows)
        conn.execute(sa.insert(SCORES), scores)
        conn.execute(sa.insert(FEEDBACK), feedback)


def test_release_one_database_upgrades_scores_builds_and_trains(
    db: Database, settings: Settings, tiny_model_dir: Path
) -> None:
    downgrade(db.engine, "base")
    db.upgrade("0001")
    assert current_revision(db.engine) == "0001"
    _fill_like_release_one(db)

    db.upgrade()  # 0002 and 0003 (and whatever comes after) over the old rows
    report = apply_rewards(db, settings.scoring)
    assert report.heuristics.failed == 0 and report.feedback.scored == 2
    with db.read_session() as s:
        rewards = combined_rewards(s, ["s1", "g1", "f1"], settings.scoring)
    assert rewards["g1"] < 0.5 and rewards["s1"] > 0.5  # the app's env reward decides on old rows too

    built = {}
    for kind, filters in (
        ("sft", {"min_reward": 0.5}),
        ("dpo", {"min_margin": 0.3}),
        ("grpo", {"min_group_size": 2}),
        ("holdout", {}),
    ):
        built[kind] = build_dataset(db, kind, filters, settings=settings)
        assert built[kind].count >= 1, (kind, built[kind].stats)
    sft_lines = [json.loads(x) for x in Path(built["sft"].path).read_text().splitlines()]
    assert {"role": "assistant", "content": "Bonjour."} in [
        line["messages"][-1] for line in sft_lines
    ]  # the correction
    assert built["grpo"].count == 1 and built["holdout"].count == 2

    from learnloop.datasets.guardrails import check_training_lengths
    from learnloop.training.config import TrainConfig
    from learnloop.training.run import train

    for kind in ("sft", "dpo"):
        cfg = TrainConfig.model_validate(
            config_dict(
                tiny_model_dir,
                settings.data_dir,
                algorithm=kind,
                out=f"old-{kind}",
                rows=[],
                dataset=built[kind].path,
                max_steps=2,
                max_length=128,
            )
        )
        assert check_training_lengths(
            cfg.dataset, tokenizer=str(tiny_model_dir), max_length=cfg.max_length
        ).ok
        result = train(cfg)
        assert result.adapter_dir is not None and result.step == 2


def _rewrite_state(ckpt: Path, change) -> None:  # noqa: ANN001
    """Edit trainer_state.json and re-sign the marker, as a writer of that format would have."""
    from learnloop.training.checkpoint import MARKER, STATE_FILE, _sha256

    state = json.loads((ckpt / STATE_FILE).read_text())
    change(state)
    (ckpt / STATE_FILE).write_text(json.dumps(state))
    marker = json.loads((ckpt / MARKER).read_text())
    marker.pop("format_version", None)
    marker["files"] = {
        str(p.relative_to(ckpt)): _sha256(p)
        for p in sorted(ckpt.rglob("*"))
        if p.is_file() and p.name != MARKER
    }
    (ckpt / MARKER).write_text(json.dumps(marker))


def test_checkpoint_formats_old_read_newer_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from learnloop.training.checkpoint import FORMAT_VERSION, latest_checkpoint
    from learnloop.training.config import TrainConfig
    from learnloop.training.run import train

    cfg = TrainConfig.model_validate(config_dict(tiny_model_dir, tmp_path, max_steps=4, checkpoint_every=2))
    first = train(cfg.model_copy(update={"max_steps": 2}))
    ckpt = latest_checkpoint(cfg.output_dir)
    assert ckpt.state["format_version"] == FORMAT_VERSION and first.step == 2
    shutil.rmtree(Path(cfg.output_dir) / "adapter")

    # Format 1 (no version written, the layout before versions): resumed as is.
    v1 = tmp_path / "v1"
    shutil.copytree(cfg.output_dir, v1)
    _rewrite_state(v1 / ckpt.path.name, lambda s: s.pop("format_version"))
    resumed = train(cfg.model_copy(update={"output_dir": v1}))
    assert resumed.resumed_from_step == 2 and resumed.step == 4

    # A newer format than this code knows: refused, saying so.
    newer = tmp_path / "newer"
    shutil.copytree(cfg.output_dir, newer)
    _rewrite_state(newer / ckpt.path.name, lambda s: s.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ConfigError, match="newer than this learnloop reads"):
        train(cfg.model_copy(update={"output_dir": newer}))

    # An old checkpoint missing what resuming needs: refused,
    # naming what is missing and how to keep the weights.
    broken = tmp_path / "broken"
    shutil.copytree(cfg.output_dir, broken)
    _rewrite_state(broken / ckpt.path.name, lambda s: (s.pop("format_version"), s.pop("position")))
    with pytest.raises(ConfigError, match="lacks position.*init_adapter"):
        train(cfg.model_copy(update={"output_dir": broken}))


def test_adapter_format_versions(tiny_model_dir: Path, tmp_path: Path) -> None:
    from learnloop.models.formats import ADAPTER_FORMAT_FILE, ADAPTER_FORMAT_VERSION, check_adapter_format
    from learnloop.training.config import TrainConfig
    from learnloop.training.run import train

    cfg = TrainConfig.model_validate(config_dict(tiny_model_dir, tmp_path, max_steps=1))
    adapter = train(cfg).adapter_dir
    assert check_adapter_format(adapter) == ADAPTER_FORMAT_VERSION
    marker = json.loads((adapter / ADAPTER_FORMAT_FILE).read_text())
    assert marker["algorithm"] == "sft" and marker["base_model"] == str(tiny_model_dir)

    old = tmp_path / "old-adapter"  # before versions: a plain PEFT folder, still usable to continue training
    shutil.copytree(adapter, old)
    (old / ADAPTER_FORMAT_FILE).unlink()
    assert check_adapter_format(old) == 0
    cont = train(cfg.model_copy(update={"output_dir": tmp_path / "cont", "init_adapter": old}))
    assert cont.adapter_dir is not None

    (old / ADAPTER_FORMAT_FILE).write_text(
        json.dumps({"format": "adapter", "version": ADAPTER_FORMAT_VERSION + 1})
    )
    with pytest.raises(ConfigError, match="newer than this learnloop reads"):
        check_adapter_format(old)
    with pytest.raises(ConfigError, match="not a LoRA adapter folder"):
        check_adapter_format(tmp_path)
