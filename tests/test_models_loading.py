"""Model loading, continuing an adapter (with its optimizer state) and merging."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learnloop.training.run import train
from training_support import adapter_weights, make_config


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(make_config(tiny_model_dir, tmp_path_factory.mktemp("m"), max_steps=6)).adapter_dir


def test_device_and_dtype_choice() -> None:
    from learnloop.models.loading import pick_device, pick_dtype

    assert pick_device("cpu") == torch.device("cpu")
    auto = pick_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32  # never bf16 on the CPU by default
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_merged_model_equals_base_plus_adapter(tiny_model_dir: Path, trained: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from learnloop.models.loading import load_for_inference, merge_adapter

    out = merge_adapter(tiny_model_dir, trained, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    peft_model, tok = load_for_inference(tiny_model_dir, trained, device="cpu")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "what is two plus two?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        a, b, c = merged(**ids).logits, peft_model(**ids).logits, base(**ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, c, atol=1e-3)  # the adapter really changed the model
    assert (out / "tokenizer_config.json").exists() and not (out / "adapter_config.json").exists()


def test_init_adapter_continues_it_and_can_keep_its_optimizer_state(
    tiny_model_dir: Path, trained: Path, tmp_path: Path
) -> None:
    # A vanishing learning rate: the continued adapter must still be the one it started from.
    cont = train(
        make_config(
            tiny_model_dir, tmp_path, out="cont", init_adapter=str(trained), max_steps=2, learning_rate=1e-12
        )
    )
    start, end = adapter_weights(trained), adapter_weights(cont.adapter_dir)
    assert start.keys() == end.keys()
    assert all(torch.allclose(start[k], end[k], atol=1e-6) for k in start)
    fresh_steps = torch.load(cont.adapter_dir / "optimizer.pt", weights_only=False)["state"][0]["step"]
    kept = train(
        make_config(
            tiny_model_dir,
            tmp_path,
            out="kept",
            init_adapter=str(trained),
            keep_optimizer_state=True,
            max_steps=2,
        )
    )
    kept_steps = torch.load(kept.adapter_dir / "optimizer.pt", weights_only=False)["state"][0]["step"]
    assert (
        float(fresh_steps) == 2 and float(kept_steps) == 6 + 2
    )  # Adam's moments carried over from the first run
