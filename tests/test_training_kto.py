"""KTO: unpaired good and bad answers. The loss equals TRL's KTOTrainer's on the same model and batch
(values and gradients), training separates desirable from undesirable answers, and bad records are
refused naming their line and field."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from learnloop.errors import ValidationFailed
from training_support import make_config, objective_for


def _u(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _a(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


RECORDS = [
    {"prompt": _u("what is two plus two?"), "completion": _a("four."), "label": True},
    {"prompt": _u("is the fox quick?"), "completion": _a("no."), "label": False},
    {"prompt": _u("say hello"), "completion": _a("hello! how can i help you today?"), "label": True},
    {"prompt": _u("count"), "completion": _a("9 8 7"), "label": False},
    {"prompt": _u("count"), "completion": _a("0 1 2 3"), "label": True},
    {"prompt": _u("say hello"), "completion": _a("goodbye."), "label": False},
]


def _peft(tiny_model_dir: Path) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config)


def _raise_completions(model: Any, obj: Any, records: list[dict[str, Any]]) -> None:
    """A few SFT steps on the completions: the policy then prefers them in any context, so the KL
    estimate over mismatched pairs is positive and the comparison exercises the KL term too."""
    from learnloop.training.lm import sequence_logprobs

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    batch = obj.collate([obj.prepare(r, i) for i, r in enumerate(records, 1)])
    for _ in range(5):
        loss = -sequence_logprobs(model, batch).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_the_loss_and_its_gradients_match_trl(tiny_model_dir: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    records = RECORDS[:4]
    obj, tok = objective_for(tiny_model_dir, "kto", batch_size=4, kto={"beta": 0.5})
    model = _peft(tiny_model_dir)
    _raise_completions(model, obj, records)
    model.train()

    ours = obj.compute(model, obj.collate([obj.prepare(r, i) for i, r in enumerate(records, 1)]))
    ours.loss.backward()
    our_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    assert ours.metrics["kl"] > 0.01  # the KL term is in play

    args = KTOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=4,
        max_length=64,
        beta=0.5,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    trainer = KTOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tok
    )
    # Handed a PEFT model, TRL freezes a copy of its adapter as the reference; learnloop's reference is
    # the base model (the adapter disabled, as in its DPO). Without the copy TRL disables the adapter too.
    trainer.model.delete_adapter("ref")
    batch = next(iter(trainer.get_train_dataloader()))  # sequential: the records in order, as ours
    theirs = trainer.compute_loss(trainer.model, batch)
    theirs.backward()
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    assert float(ours.loss.detach()) == pytest.approx(float(theirs.detach()), rel=1e-5, abs=1e-6)
    assert ours.metrics["kl"] == pytest.approx(logged["kl"], rel=1e-4, abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert ours.metrics[key] == pytest.approx(logged[key], rel=1e-4, abs=1e-5), key
    for name, p in model.named_parameters():
        if p.requires_grad and ".default." in name:
            assert torch.allclose(our_grads[name], p.grad, rtol=1e-4, atol=1e-7), name


def test_kto_raises_desirable_answers_over_undesirable_ones(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from learnloop.training.lm import sequence_logprobs
    from learnloop.training.run import train

    result = train(
        make_config(tiny_model_dir, tmp_path, algorithm="kto", rows=RECORDS, batch_size=3, max_steps=16)
    )
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    # A fresh LoRA (B = 0) is the reference itself: every loss term is 1 - sigmoid(0).
    assert math.isclose(rows[0]["loss"], 0.5, abs_tol=1e-4) and rows[0]["kl"] == 0.0
    assert rows[-1]["loss"] < 0.45

    obj, _ = objective_for(tiny_model_dir, "kto")
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(result.adapter_dir)
    )
    model.eval()
    for record in RECORDS:
        batch = obj.collate([obj.prepare(record, 1), obj.prepare(RECORDS[0], 2)])
        with torch.no_grad():
            after = float(sequence_logprobs(model, batch)[0])
            with model.disable_adapter():
                before = float(sequence_logprobs(model, batch)[0])
        if record["label"]:
            assert after > before + 1.0, record
        else:
            assert after < before - 1.0, record


def test_kl_pairs_join_each_prompt_with_the_previous_completion(tiny_model_dir: Path) -> None:
    obj, tok = objective_for(tiny_model_dir, "kto")
    batch = obj.collate([obj.prepare(r, i) for i, r in enumerate(RECORDS[:3], 1)])
    texts = [tok.decode([t for t in row if t != tok.pad_token_id]) for row in batch["kl_input_ids"].tolist()]
    assert (
        texts[0].startswith("<|im_start|>user\nwhat is two plus two?") and "hello! how can i help" in texts[0]
    )
    assert texts[1].startswith("<|im_start|>user\nis the fox quick?") and "four." in texts[1]
    trained = batch["kl_labels"][1][batch["kl_labels"][1] != -100].tolist()
    assert tok.decode(trained) == "four.<|im_end|>\n"  # only the borrowed completion is scored
    assert batch["label"].tolist() == [True, False, True]


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"completion": _a("x"), "label": True}, "prompt"),
        ({"prompt": _u("q"), "label": True}, "completion"),
        ({"prompt": _u("q"), "completion": _a("x")}, "label"),
        ({"prompt": _u("q"), "completion": _a("x"), "label": 1}, "label"),
        ({"prompt": _u("q"), "completion": _u("x"), "label": True}, "completion"),
    ],
)
def test_bad_records_name_line_and_field(tiny_model_dir: Path, record: dict[str, Any], field: str) -> None:
    obj, _ = objective_for(tiny_model_dir, "kto")
    with pytest.raises(ValidationFailed, match=rf"line 9: field '{field}'"):
        obj.prepare(record, 9)


def test_plain_strings_are_read_as_one_turn_each(tiny_model_dir: Path) -> None:
    obj, tok = objective_for(tiny_model_dir, "kto")
    ex = obj.prepare({"prompt": "say hello", "completion": "hello!", "label": False}, 1)
    ids, labels = ex.data["completion"]
    assert tok.decode(ex.data["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert tok.decode([t for t in labels if t != -100]) == "hello!<|im_end|>\n"
    assert obj.undesirable == 1 and obj.desirable == 0
