"""Serving: OpenAI-compatible answers from the base model and every trained version.

``LocalBackend`` (transformers + peft in-process), ``VllmBackend`` (a vLLM server) and
``UpstreamBackend`` (an OpenAI-compatible provider an alias serves as ``upstream:<name>``) implement
the ``ServingBackend`` interface in backend.py; ``ServingRuntime`` keeps a process's aliases in step with
the database (the registry's ``move`` changes them; every server converges on it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from learnloop.serving.backend import BASE, ChatRequest, ChatResult, Chunk, ServingBackend

if TYPE_CHECKING:
    from learnloop.serving.local import LocalBackend
    from learnloop.serving.runtime import ServedCapture, ServingRuntime
    from learnloop.serving.upstream import UpstreamBackend, build_upstreams, confidence
    from learnloop.serving.vllm import VllmBackend

_LAZY = {
    "LocalBackend": "learnloop.serving.local",  # imports torch: only when asked for
    "VllmBackend": "learnloop.serving.vllm",
    "UpstreamBackend": "learnloop.serving.upstream",
    "build_upstreams": "learnloop.serving.upstream",
    "confidence": "learnloop.serving.upstream",
    "ServingRuntime": "learnloop.serving.runtime",
    "ServedCapture": "learnloop.serving.runtime",
    "build_runtime": "learnloop.serving.setup",
    "default_base_model": "learnloop.serving.setup",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = [
    "BASE",
    "ChatRequest",
    "ChatResult",
    "Chunk",
    "LocalBackend",
    "ServedCapture",
    "ServingBackend",
    "ServingRuntime",
    "UpstreamBackend",
    "VllmBackend",
    "build_runtime",
    "build_upstreams",
    "confidence",
    "default_base_model",
]
