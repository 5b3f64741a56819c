from __future__ import annotations

from pathlib import Path


def test_tiny_model_loads_and_generates(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "what is two plus two?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    text = tok.decode(ids["input_ids"][0])
    assert text.startswith("<|im_start|>user\nwhat is two plus two?<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5 or tok.eos_token_id in out[0].tolist()
    assert torch.isfinite(model(**ids).logits).all()
