"""Loading a base model and tokenizer, applying LoRA adapters, merging: what training,
evaluation and serving share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from learnloop.models.prepared import resolve_base_model


def pick_device(spec: str = "auto") -> torch.device:
    """'auto' → cuda if available, else mps, else cpu; anything else is taken as torch spells it."""
    if spec != "auto":
        return torch.device(spec)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(spec: str, device: torch.device) -> torch.dtype:
    """'auto' → bf16 on a CUDA GPU that supports it, else fp32 (CPU bf16 matmuls are not
    always faster or exact enough)."""
    if spec != "auto":
        return getattr(torch, spec)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(path: Path | str) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:  # batching needs a pad id; the mask keeps it out of the loss
        tok.pad_token = tok.eos_token
    return tok


def load_base(path: Path | str, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device)


def load_for_inference(
    base: str | Path, adapter_dir: str | Path | None, *, device: str = "auto", dtype: str = "auto"
) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer): the base with the adapter applied (not merged), or the base alone."""
    from peft import PeftModel

    base_path = resolve_base_model(base)
    dev = pick_device(device)
    model = load_base(base_path, dev, pick_dtype(dtype, dev))
    if adapter_dir is not None:
        from learnloop.models.formats import check_adapter_format

        check_adapter_format(adapter_dir)
        model = PeftModel.from_pretrained(model, str(adapter_dir)).to(dev)
    model.eval()
    return model, load_tokenizer(base_path)


def merge_adapter(
    base: str | Path, adapter_dir: str | Path, out_dir: str | Path, *, dtype: str = "auto"
) -> Path:
    """Fold the LoRA adapter into the base weights and save a plain HF model folder (+ tokenizer)."""
    out = Path(out_dir)
    model, tokenizer = load_for_inference(base, adapter_dir, device="cpu", dtype=dtype)
    merged = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
