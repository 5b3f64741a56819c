"""The backend evaluation generates through when the caller gives none: serving's LocalBackend.

The same implementation serving answers users with, so a candidate is measured as it would be served.
"""

from __future__ import annotations

from pathlib import Path

from learnloop.serving.backend import ServingBackend


def default_backend(
    base_model: str | Path, *, device: str = "auto", data_dir: Path | None = None
) -> ServingBackend:
    from learnloop.serving.local import LocalBackend

    return LocalBackend(base_model, device=device, data_dir=data_dir)
