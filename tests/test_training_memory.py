"""The training process keeps freed memory in its heap (glibc), so steps stop faulting it back in."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys, torch
from learnloop.training.memory import keep_freed_memory
def rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20
applied = keep_freed_memory() if sys.argv[1] == "on" else None
buf = torch.ones(64 * 2**20 // 4)  # 64 MB, written: resident
peak = rss_mb()
del buf
print(applied, peak - rss_mb())
"""


def _freed_mb(setting: str) -> tuple[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, setting], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator, read through /proc")
def test_freed_buffers_stay_resident_only_with_the_setting() -> None:
    applied, kept_freed = _freed_mb("on")
    _, default_freed = _freed_mb("off")
    assert applied == "True"
    assert default_freed > 60  # glibc's default: a 64 MB buffer is unmapped when freed
    assert kept_freed < 4  # with the setting it stays in the heap for the next step
