"""Building the serving side of a server from settings: which base model, which backend, capture on or off."""

from __future__ import annotations

from typing import Any

from learnloop.errors import ConfigError
from learnloop.store.db import Database


def default_base_model(settings: Any) -> str:
    """``serving.base_model``, else the prepared ``smollm2``; ConfigError saying what to do when neither."""
    if settings.serving.base_model:
        return settings.serving.base_model
    from learnloop.models.prepared import _is_hf_folder, _models_dir

    if _is_hf_folder(_models_dir(settings.data_dir) / "smollm2"):
        return "smollm2"
    raise ConfigError(
        "No base model to serve: run `learnloop models prepare smollm2`, or set serving.base_model "
        "(LEARNLOOP_SERVING__BASE_MODEL) to a prepared name, an HF folder or a GGUF file."
    )


def build_runtime(settings: Any, db: Database, *, backend: Any = None) -> Any:
    """A ServingRuntime on the configured backend (loads the base model: takes seconds)."""
    from learnloop.serving.runtime import ServedCapture, ServingRuntime
    from learnloop.serving.upstream import build_upstreams

    s = settings.serving
    upstreams = build_upstreams(settings)  # first: a missing API key stops the start before a model loads
    if backend is None:
        if s.backend == "vllm":
            from learnloop.serving.vllm import VllmBackend

            backend = VllmBackend(s.vllm_url)  # the base: the model the server lists first
        else:
            from learnloop.serving.local import LocalBackend

            backend = LocalBackend(
                default_base_model(settings),
                device=s.device,
                dtype=s.dtype,
                max_batch_size=s.max_batch_size,
                max_queued=s.max_queued,
                default_max_tokens=s.default_max_tokens,
                data_dir=settings.data_dir,
                threads=s.threads,
            )
    capture = ServedCapture(settings, db) if s.capture else None
    return ServingRuntime(
        backend,
        db,
        poll_seconds=s.alias_poll_seconds,
        capture=capture,
        max_adapters=s.max_adapters,
        upstreams=upstreams,
        own_price=s.price_per_1k_tokens,
    )
