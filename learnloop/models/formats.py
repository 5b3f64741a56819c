"""Format versions of what learnloop writes to disk for models: adapters (and, in training, checkpoints).

An adapter folder carries ``learnloop_format.json`` (``{"format": "adapter", "version": N, ...}``).
A folder without it was written before versions existed (format 0): a plain PEFT adapter, which is
still read as one. A newer version than this code knows is refused with a message saying so, rather
than half-loaded. Bump ``ADAPTER_FORMAT_VERSION`` when the layout changes, and teach
``check_adapter_format`` to read (or clearly refuse) the older one: old versions keep working.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from learnloop.errors import ConfigError

ADAPTER_FORMAT_VERSION = 1
ADAPTER_FORMAT_FILE = "learnloop_format.json"


def write_adapter_format(folder: Path | str, **info: Any) -> Path:
    """Stamp an adapter folder with the current format version (and ``info``, e.g. the base model)."""
    path = Path(folder) / ADAPTER_FORMAT_FILE
    path.write_text(
        json.dumps({"format": "adapter", "version": ADAPTER_FORMAT_VERSION, **info}, indent=2, default=str)
    )
    return path


def check_adapter_format(folder: Path | str) -> int:
    """The adapter folder's format version (0: written before versions existed);
    ConfigError when unreadable."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise ConfigError(f"{folder} is not a LoRA adapter folder (no adapter_config.json).")
    marker = folder / ADAPTER_FORMAT_FILE
    if not marker.is_file():
        return 0  # a plain PEFT adapter (learnloop before format versions, or made elsewhere): readable as is
    try:
        version = int(json.loads(marker.read_text()).get("version", 0))
    except (ValueError, TypeError, AttributeError, OSError) as exc:
        raise ConfigError(f"{marker} is damaged ({exc}); re-export the adapter.") from None
    if version > ADAPTER_FORMAT_VERSION:
        raise ConfigError(
            f"Adapter {folder} has format version {version}, newer than this learnloop reads "
            f"({ADAPTER_FORMAT_VERSION}). Upgrade learnloop to use it."
        )
    return version
