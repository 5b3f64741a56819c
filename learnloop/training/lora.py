"""The trainable model: a base with a fresh or continued LoRA adapter, as a TrainConfig describes it."""

from __future__ import annotations

from typing import Any

import torch

from learnloop.models import load_base, load_tokenizer, pick_dtype, resolve_base_model
from learnloop.training.config import TrainConfig


def load_training_model(config: TrainConfig, device: torch.device) -> tuple[Any, Any]:
    """The trainable PeftModel (fresh LoRA or ``config.init_adapter``) and its tokenizer."""
    from peft import LoraConfig, PeftModel, get_peft_model

    base_path = resolve_base_model(config.base_model)
    tokenizer = load_tokenizer(base_path)
    base = load_base(base_path, device, pick_dtype(config.dtype, device))
    if config.init_adapter is not None:
        from learnloop.models.formats import check_adapter_format

        check_adapter_format(config.init_adapter)  # an adapter from a newer learnloop is refused by name
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
