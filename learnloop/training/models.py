"""Loading the base model and tokenizer, LoRA set-up, merging and inference loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from learnloop.training.config import TrainConfig
from learnloop.training.gguf import resolve_base_model


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
    """'auto' → bf16 on a CUDA GPU that supports it, else fp32 (CPU bf16 matmuls are not always faster or exact enough)."""
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


def load_training_model(config: TrainConfig, device: torch.device) -> tuple[Any, Any]:
    """The trainable PeftModel (fresh LoRA or ``config.init_adapter``) and its tokenizer."""
    from peft import LoraConfig, PeftModel, get_peft_model

    base_path = resolve_base_model(config.base_model)
    tokenizer = load_tokenizer(base_path)
    base = load_base(base_path, device, pick_dtype(config.dtype, device))
    if config.init_adapter is not None:
        model = PeftModel.from_pretrained(base, str(config.init_adapter), is_trainable=True)
    else:
        # Seeded so that a fresh adapter's random A matrices are the same on every (re)start.
        torch.manual_seed(config.seed)
        lora = LoraConfig(
            r=config.lora.r,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=config.lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(base, lora)
    model.to(device)
    return model, tokenizer


def trainable_parameters(model: Any) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def load_for_inference(base: str | Path, adapter_dir: str | Path | None, *, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """(model in eval mode, tokenizer): the base with the adapter applied (not merged), or the base alone."""
    from peft import PeftModel

    base_path = resolve_base_model(base)
    dev = pick_device(device)
    model = load_base(base_path, dev, pick_dtype(dtype, dev))
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).to(dev)
    model.eval()
    return model, load_tokenizer(base_path)


def merge_adapter(base: str | Path, adapter_dir: str | Path, out_dir: str | Path, *, dtype: str = "auto") -> Path:
    """Fold the LoRA adapter into the base weights and save a plain HF model folder (+ tokenizer)."""
    out = Path(out_dir)
    model, tokenizer = load_for_inference(base, adapter_dir, device="cpu", dtype=dtype)
    merged = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
