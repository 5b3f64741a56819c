"""Exported datasets are what TRL's own trainers read: one real step of SFTTrainer
and DPOTrainer on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import chat
from learnloop.config import Settings
from learnloop.datasets import build_dataset, export_dataset
from learnloop.store import Database, ingest, parse_batch

pytestmark = pytest.mark.slow


def _seed(db: Database) -> None:
    trajectories = []
    for i in range(4):
        for j, (answer, reward) in enumerate([("yes. thank you.", 1.0), ("no.", 0.0)]):
            trajectories.append(
                {
                    "id": f"t{i}-{j}",
                    "messages": chat(f"what is {i} plus {i}?", f"{answer} {i}"),
                    "scores": {"quality": reward},
                }
            )
    with db.session() as s:
        ingest(s, parse_batch({"trajectories": trajectories}), holdout_fraction=0.0)


def _trainable_params(model) -> dict[str, object]:  # noqa: ANN001
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_trl_trainers_take_exported_sft_and_dpo(
    db: Database, settings: Settings, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    _seed(db)
    sft = build_dataset(db, "sft", {"min_reward": 0.5}, settings=settings, tokenizer=tiny_model_dir)
    dpo = build_dataset(db, "dpo", {"min_margin": 0.5}, settings=settings, tokenizer=tiny_model_dir)
    assert sft.count == 4 and dpo.count == 4
    with db.read_session() as s:
        sft_file = export_dataset(s, sft.id, tmp_path / "sft.jsonl")
        dpo_file = export_dataset(s, dpo.id, tmp_path / "dpo.jsonl")

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    common = dict(
        max_steps=1,
        per_device_train_batch_size=2,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        max_length=128,
    )

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = _trainable_params(model)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=str(tmp_path / "sft-out"), **common),
        train_dataset=load_dataset(
            "json", data_files=str(sft_file), split="train", cache_dir=str(tmp_path / "hf")
        ),
        processing_class=tokenizer,
    )
    result = trainer.train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(before[n], p) for n, p in _trainable_params(model).items())

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = _trainable_params(model)
    trainer = DPOTrainer(
        model=model,
        args=DPOConfig(output_dir=str(tmp_path / "dpo-out"), **common),
        train_dataset=load_dataset(
            "json", data_files=str(dpo_file), split="train", cache_dir=str(tmp_path / "hf")
        ),
        processing_class=tokenizer,
    )
    result = trainer.train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(before[n], p) for n, p in _trainable_params(model).items())
