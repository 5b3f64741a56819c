"""Base-model resolution: prepared names, HF folders and GGUF files.

(Placeholder: only HF folders resolve yet; GGUF conversion and prepared names are being built.)
"""

from __future__ import annotations

from pathlib import Path

from learnloop.errors import ConfigError


def resolve_base_model(spec: str | Path, data_dir: Path | None = None) -> Path:
    """Return the HF model folder that ``spec`` names."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return path
    raise ConfigError(f"Base model {str(spec)!r} is not an HF model folder (a directory with config.json).")
