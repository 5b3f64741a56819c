"""The backend evaluation generates through when the caller gives none.

Serving's LocalBackend, so a candidate is measured as it would be served. When this process already
serves the same base (the daemon's worker inside ``learnloop serve``), the evaluation answers through
that server's batcher as background rows: the model is not loaded twice, the held-out answers share
decode steps with live requests, and requests never wait for them (they have slots of their own).
"""

from __future__ import annotations

from pathlib import Path

from learnloop.serving.backend import ServingBackend


def default_backend(
    base_model: str | Path, *, device: str = "auto", data_dir: Path | None = None
) -> ServingBackend:
    from learnloop.serving.local import LocalBackend, running_backend

    shared = running_backend(base_model, data_dir, device)
    if shared is not None:
        return shared.background()
    return LocalBackend(base_model, device=device, data_dir=data_dir)
