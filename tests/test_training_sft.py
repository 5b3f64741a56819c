"""SFT objective: assistant-only masks, the gathered-logits loss, and that training fits data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from training_support import SFT_ROWS, adapter_weights, first_last_loss, make_config, objective_for


@pytest.fixture(scope="module")
def sft(tiny_model_dir: Path):  # noqa: ANN201
    return objective_for(tiny_model_dir)


def _labelled_text(tok, example) -> str:  # noqa: ANN001
    ids, labels = example.data["input_ids"], example.data["labels"]
    return tok.decode([t for t, lab in zip(ids, labels) if lab != -100])


def test_only_assistant_tokens_carry_loss(sft) -> None:  # noqa: ANN001
    objective, tok = sft
    record = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what is two plus two?"},
            {"role": "assistant", "content": "four."},
            {"role": "user", "content": "sure?"},
            {"role": "assistant", "content": "yes."},
        ]
    }
    ex = objective.prepare(record, 1)
    assert tok.decode(ex.data["input_ids"]).startswith("<|im_start|>system\nbe brief<|im_end|>")
    # Both assistant turns, each with its end-of-turn marker; nothing of system/user/role headers.
    assert _labelled_text(tok, ex) == "four.<|im_end|>\nyes.<|im_end|>\n"
    labelled = [i for i, lab in enumerate(ex.data["labels"]) if lab != -100]
    assert labelled and all(ex.data["labels"][i] == ex.data["input_ids"][i] for i in labelled)


def test_conversation_opening_with_the_assistant(sft) -> None:  # noqa: ANN001
    objective, tok = sft
    record = {
        "messages": [
            {"role": "assistant", "content": "hello!"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yes."},
        ]
    }
    # The role header of the first turn is template text, not something the model should learn to say.
    assert _labelled_text(tok, objective.prepare(record, 1)) == "hello!<|im_end|>\nyes.<|im_end|>\n"


def test_prompt_completion_trains_only_the_completion(sft) -> None:  # noqa: ANN001
    objective, tok = sft
    record = {
        "prompt": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello!"},
            {"role": "user", "content": "count"},
        ],
        "completion": [{"role": "assistant", "content": "0 1 2"}],
    }
    assert _labelled_text(tok, objective.prepare(record, 1)) == "0 1 2<|im_end|>\n"


def test_tool_call_turns_and_truncation(sft, tiny_model_dir: Path) -> None:  # noqa: ANN001
    objective, tok = sft
    ex = objective.prepare(SFT_ROWS[4], 5)  # assistant tool call (content None), tool result, final answer
    assert _labelled_text(tok, ex) == "<|im_end|>\nthe result is four.<|im_end|>\n"
    full = objective.prepare(SFT_ROWS[2], 3)
    first = next(i for i, lab in enumerate(full.data["labels"]) if lab != -100)
    short, _ = objective_for(tiny_model_dir, max_length=first + 3)
    cut = short.prepare(SFT_ROWS[2], 3)
    assert cut.length == first + 3 and cut.data["input_ids"] == full.data["input_ids"][: first + 3]
    assert sum(lab != -100 for lab in cut.data["labels"]) == 3  # the right end is cut, the prompt kept
    # A conversation whose assistant turn lies wholly past max_length has nothing to learn: skipped.
    long_prompt = {
        "messages": [
            {"role": "user", "content": "the quick brown fox " * 20},
            {"role": "assistant", "content": "yes."},
        ]
    }
    assert short.prepare(long_prompt, 9) is None


def test_gathered_loss_equals_full_logits_loss(sft, tiny_model_dir: Path) -> None:  # noqa: ANN001
    import torch
    from transformers import AutoModelForCausalLM

    from learnloop.training.sft import full_logits_loss

    objective, _ = sft
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = objective.collate([objective.prepare(r, i) for i, r in enumerate(SFT_ROWS[:4], 1)])
    assert (batch["attention_mask"] == 0).any()  # padding is present and must not count
    fast = objective.compute(model, batch).loss
    assert torch.allclose(fast, full_logits_loss(model, batch), atol=1e-5)


def test_sft_training_lowers_loss_and_changes_only_the_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    from learnloop.training.run import train

    base_file = tiny_model_dir / "model.safetensors"
    before = hashlib.sha256(base_file.read_bytes()).hexdigest()
    result = train(make_config(tiny_model_dir, tmp_path, max_steps=12))
    first, last = first_last_loss(result.metrics_path)
    assert last < first - 0.5, (first, last)
    weights = adapter_weights(result.adapter_dir)
    assert weights and all("lora_" in k for k in weights)  # only adapter tensors are saved
    # A fresh LoRA starts with B = 0; training must have moved it.
    assert any(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_B" in k)
    assert hashlib.sha256(base_file.read_bytes()).hexdigest() == before  # the base model is untouched
    assert (result.adapter_dir / "tokenizer_config.json").exists() and (
        result.adapter_dir / "optimizer.pt"
    ).exists()
