"""The registry on the tiny model and both databases: register, promote, rollback, restore,
delete, retention, lineage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from registry_support import make_adapter, make_run_dir, settings_for

from learnloop.config import Settings
from learnloop.errors import Conflict, NotFound, ValidationFailed
from learnloop.paths import data_dir
from learnloop.registry import (
    alias_history,
    delete_version,
    diff_versions,
    get_version,
    head_version,
    lineage,
    list_versions,
    promote,
    register_version,
    restore,
    rollback,
    trace_trajectory,
)
from learnloop.store import Database, ingest
from learnloop.store.aliases import get_alias
from learnloop.store.models import LoopState, ModelVersion


@pytest.fixture
def s(settings: Settings, tiny_model_dir: Path) -> Settings:
    return settings_for(settings, tiny_model_dir, registry={"keep_versions": 0})


def _pass_gate(db: Database, version_id: str) -> None:
    with db.session() as session:
        session.get(ModelVersion, version_id).gate = {
            "passed": True,
            "verdict": "promote",
            "reasons": ["test"],
        }


def test_register_copies_immutable_with_hashes_and_lineage(
    db: Database, s: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    run = make_run_dir(tiny_model_dir, tmp_path / "run1")
    v1 = register_version(db, s, adapter_dir=run, job_id=None, note="first")
    assert v1 == "v0001"
    info = get_version(db, v1)
    folder = Path(info.artifact_path)
    assert folder == data_dir(s.data_dir).adapter(v1)
    assert set(info.files) >= {"adapter_model.safetensors", "adapter_config.json"}
    for name, digest in info.files.items():
        import hashlib

        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
        assert (run / "adapter" / name).read_bytes() == (folder / name).read_bytes()
        assert not os.access(folder / name, os.W_OK) or os.geteuid() == 0  # read-only copy
    assert info.algorithm == "sft" and info.state == "candidate" and info.base_model_hash
    assert info.metrics["steps"] == 6 and info.metrics["final_loss"] == pytest.approx(1.4)
    assert info.metrics["eval_loss"] == pytest.approx(1.5)

    # A run continuing v0001's adapter descends from it, found from its config.
    run2 = make_run_dir(tiny_model_dir, tmp_path / "run2", seed=1, init_adapter=folder)
    v2 = register_version(db, s, adapter_dir=run2 / "adapter")
    assert v2 == "v0002" and get_version(db, v2).parent_id == v1
    assert [v.id for v in list_versions(db)] == ["v0002", "v0001"]
    chain = lineage(db, v2)
    assert chain["parent"]["version"]["id"] == v1
    assert chain["adapter"]["sha256"] == get_version(db, v2).adapter_sha256
    assert chain["base_model"]["sha256"] == info.base_model_hash
    d = diff_versions(db, v1, v2)
    assert "init_adapter" in d["config"] and d["fields"]["parent_id"] == [None, v1]


def test_register_refuses_adapter_of_another_base(
    db: Database, s: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from learnloop.models.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", hidden_size=32)
    adapter = make_adapter(other, tmp_path / "other-adapter")
    with pytest.raises(ValidationFailed, match="does not match base model") as exc:
        register_version(db, s, adapter_dir=adapter, base_model=str(tiny_model_dir))
    assert "input size 32, base has 64" in str(exc.value)
    # Same shapes, different weights: caught by the base revision the adapter names.
    same_shape = build_tiny_model(tmp_path / "same-shape", seed=7)
    adapter2 = make_adapter(same_shape, tmp_path / "same-shape-adapter")
    with pytest.raises(ValidationFailed, match="a different model"):
        register_version(db, s, adapter_dir=adapter2, base_model=str(tiny_model_dir))
    with pytest.raises(ValidationFailed, match="neither a LoRA adapter"):
        register_version(db, s, adapter_dir=tmp_path)
    assert list_versions(db) == []
    adapters = data_dir(s.data_dir).adapters
    assert not adapters.exists() or not list(adapters.iterdir())  # nothing left behind


def test_promote_needs_gate_or_force_and_rollback_walks_back(
    db: Database, s: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    ids = [
        register_version(db, s, adapter_dir=make_adapter(tiny_model_dir, tmp_path / f"a{i}", seed=i))
        for i in range(3)
    ]
    v1, v2, v3 = ids
    with pytest.raises(Conflict, match="no gate verdict"):
        promote(db, s, v1, actor="alice")
    with db.session() as session:
        session.get(ModelVersion, v2).gate = {"passed": False, "verdict": "reject", "reasons": ["worse"]}
    with pytest.raises(Conflict, match="worse"):
        promote(db, s, v2)
    _pass_gate(db, v1)
    promote(db, s, v1, actor="alice", reason="first good one")
    promote(db, s, v2, actor="bob", force=True, reason="hotfix")
    _pass_gate(db, v3)
    promote(db, s, v3, actor="carol")
    assert get_alias(db).version_id == v3
    assert get_version(db, v3).state == "serving" and get_version(db, v2).state == "archived"

    assert rollback(db, s, actor="dave", reason="bad answers") == v2
    assert rollback(db, s, actor="dave") == v1
    assert rollback(db, s, actor="dave") is None  # the base model
    with pytest.raises(Conflict, match="no earlier version"):
        rollback(db, s)
    assert get_alias(db).version_id is None
    history = alias_history(db)[::-1]
    assert [(e["action"], e["from"], e["to"], e["actor"]) for e in history] == [
        ("promote", None, v1, "alice"),
        ("force", v1, v2, "bob"),
        ("promote", v2, v3, "carol"),
        ("rollback", v3, v2, "dave"),
        ("rollback", v2, v1, "dave"),
        ("rollback", v1, None, "dave"),
    ]
    assert history[1]["reason"] == "hotfix" and history[3]["reason"] == "bad answers"
    assert all(get_version(db, v).ever_served for v in ids)
    with pytest.raises(NotFound):
        promote(db, s, "v9999", force=True)


def test_restore_is_byte_identical_and_sets_the_head(
    db: Database, s: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    src = make_adapter(tiny_model_dir, tmp_path / "a", seed=3)
    original = {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()}
    v1 = register_version(db, s, adapter_dir=src, loop="support")
    register_version(db, s, adapter_dir=make_adapter(tiny_model_dir, tmp_path / "b", seed=4), loop="support")
    restored = restore(db, s, v1, actor="alice")
    assert restored.loop == "support" and head_version(db, "support") == v1
    assert {p.name: p.read_bytes() for p in restored.adapter_path.iterdir()} == original
    with db.read_session() as session:
        assert session.get(LoopState, "support").head_version_id == v1
    with pytest.raises(Conflict, match="no gate verdict"):
        restore(db, s, v1, serve=True)
    restore(db, s, v1, serve=True, force=True, actor="alice")
    assert get_alias(db).version_id == v1 and alias_history(db)[0]["action"] == "restore"

    # A changed byte is caught before anything is restored or served.
    weights = restored.adapter_path / "adapter_model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(Conflict, match="do not match"):
        restore(db, s, v1)


def test_delete_refusals_force_and_retention(
    db: Database, s: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    v1 = register_version(db, s, adapter_dir=make_adapter(tiny_model_dir, tmp_path / "a", seed=1))
    v2 = register_version(
        db, s, adapter_dir=make_adapter(tiny_model_dir, tmp_path / "b", seed=2), parent_id=v1
    )
    _pass_gate(db, v2)
    promote(db, s, v2)
    with pytest.raises(Conflict, match="served by alias"):
        delete_version(db, s, v2, force=True)
    with pytest.raises(Conflict, match="lineage of v0002"):
        delete_version(db, s, v1)
    folder = Path(get_version(db, v1).artifact_path)
    delete_version(db, s, v1, force=True)
    assert not folder.exists() and get_version(db, v2).parent_id is None
    with pytest.raises(NotFound):
        get_version(db, v1)

    # Retention: keep the newest 2 plus everything that ever served (v0002).
    kept = settings_for(s, tiny_model_dir, registry={"keep_versions": 2})
    ids = [
        register_version(db, kept, adapter_dir=make_adapter(tiny_model_dir, tmp_path / f"r{i}", seed=10 + i))
        for i in range(4)
    ]
    states = {v.id: (v.state, v.artifact_path is not None) for v in list_versions(db)}
    assert states[v2] == ("serving", True)
    assert states[ids[-1]][1] and states[ids[-2]][1]
    # Pruned files do not make a version archived (that means "served before"): they never served.
    assert states[ids[0]] == ("candidate", False) and states[ids[1]] == ("candidate", False)
    assert not data_dir(s.data_dir).adapter(ids[0]).exists()
    with pytest.raises(Conflict, match="pruned"):
        promote(db, s, ids[0], force=True)


def test_served_answer_traces_to_its_data(
    db: Database, s: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"messages": []}) + "\n")
    v1 = register_version(db, s, adapter_dir=make_run_dir(tiny_model_dir, tmp_path / "run", dataset=data))
    with db.session() as session:
        ingest(
            session,
            {
                "trajectories": [
                    {
                        "id": "served-1",
                        "source": "served",
                        "model": "learnloop",
                        "messages": [
                            {"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "yo"},
                        ],
                        "metadata": {},
                    }
                ]
            },
        )
        from learnloop.store.models import Trajectory

        session.get(Trajectory, "served-1").model_version = v1
    traced = trace_trajectory(db, "served-1")
    import hashlib

    assert traced["lineage"]["version"]["id"] == v1
    assert traced["lineage"]["dataset"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert traced["lineage"]["training"]["config"]["dataset"] == str(data)


def test_moves_by_alias_set_count_for_rollback_and_retention(
    db: Database, s: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from learnloop.registry import apply_retention, move

    v1, v2, v3 = (
        register_version(db, s, adapter_dir=make_adapter(tiny_model_dir, tmp_path / f"a{i}", seed=i))
        for i in range(3)
    )
    # Serving's own command applies the registry's gate: never evaluated means refused, unless forced.
    with pytest.raises(Conflict, match=rf"{v1} has no gate verdict.*--force"):
        move(db, s, "learnloop", "set", v1, actor="cli", override="Set it with --force")
    move(db, s, "learnloop", "set", v1, actor="cli", force=True)
    move(db, s, "learnloop", "set", v2, actor="cli", force=True)
    assert [e["action"] for e in alias_history(db, "learnloop", 10)] == ["force", "force"]
    assert rollback(db, s) == v1
    kept = settings_for(s, tiny_model_dir, registry={"keep_versions": 1})
    assert apply_retention(db, kept) == []  # v1 and v2 served (the log says so); v3 is the newest
    with pytest.raises(Conflict, match="a version that served"):
        delete_version(db, s, v2)
