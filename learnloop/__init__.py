"""learnloop: continuous learning for LLM applications."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# The capture SDK's names, importable as learnloop.trajectory etc. Loaded on first use so that
# `import learnloop` (and the CLI) stays light.
_CAPTURE_NAMES = frozenset(
    {
        "configure",
        "trajectory",
        "traced",
        "wrap_openai",
        "feedback",
        "reward",
        "flush",
        "shutdown",
        "current_trajectory",
        "get_client",
        "CaptureClient",
        "TrajectoryRecorder",
    }
)


def __getattr__(name: str) -> Any:
    if name in _CAPTURE_NAMES:
        from learnloop import capture

        value = getattr(capture, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'learnloop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _CAPTURE_NAMES)
