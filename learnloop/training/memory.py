"""The C allocator's settings for a training process.

glibc serves each large buffer (a step's activations, logits and gradients: tens of MB) with its
own ``mmap`` and gives it back to the system when freed, so every step faults the same memory in
again and zero-fills it. Keeping freed memory in the heap removed that cost: a profile of SFT on
SmolLM2 showed the same kernels on the same shapes 6% (``mm``) to 2.3x (log-softmax backward)
slower than in a plain loop whose allocator had settled differently, and with these settings
learnloop's tokens/s rose about 11% (one A/B run: benchmarks/README.md, "Training"). The price is
that the process keeps its peak memory until it exits.
"""

from __future__ import annotations

import ctypes
import functools

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_LIMIT = 2**31 - 1  # mallopt takes an int


@functools.cache  # process-wide and idempotent: every (re)start of a run in one process calls it
def keep_freed_memory() -> bool:
    """Tell glibc to neither mmap large buffers nor trim the heap. False where that is not glibc."""
    try:
        # The C library this process already runs on: no library search (which spawns ldconfig).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt, nothing to tune
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _LIMIT)) and bool(mallopt(_M_TRIM_THRESHOLD, _LIMIT))
