"""Base models and adapters: what training, evaluation and serving share. Needs the `train` extra.

Prepared names, HF folders and GGUF files resolve to a plain HF folder (``prepared``); loading a
base and applying or merging LoRA adapters lives in ``loading``; ``tiny`` builds a tiny offline
model for tests and smoke runs.
"""

from learnloop.models.loading import (
    load_base,
    load_for_inference,
    load_tokenizer,
    merge_adapter,
    pick_device,
    pick_dtype,
)
from learnloop.models.prepared import (
    KNOWN_MODELS,
    list_models,
    prepare_model,
    resolve_base_model,
)

__all__ = [
    "KNOWN_MODELS",
    "list_models",
    "load_base",
    "load_for_inference",
    "load_tokenizer",
    "merge_adapter",
    "pick_device",
    "pick_dtype",
    "prepare_model",
    "resolve_base_model",
]
