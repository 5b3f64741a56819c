"""A child started with ``signalled_when_parent_dies`` hears of its parent's death, even by SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_support import wait_for

from api_support import REPO_ROOT

# The parent starts a child that writes "armed", then records the signal it gets; the parent sleeps.
PARENT = """
import signal, subprocess, sys, time
from learnloop.children import signalled_when_parent_dies
child = subprocess.Popen(
    [sys.executable, "-c", sys.argv[1], sys.argv[2]], preexec_fn=signalled_when_parent_dies(signal.SIGTERM)
)
print(child.pid, flush=True)
time.sleep(600)
"""
CHILD = """
import pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGTERM, lambda s, f: (out.write_text(f"got {s}"), sys.exit(0)))
out.write_text("armed")
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_child_gets_sigterm_when_its_parent_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "child.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, str(out)], env=env, stdout=subprocess.PIPE, text=True
    )
    child_pid = int(parent.stdout.readline())
    try:
        wait_for(lambda: out.exists() and out.read_text() == "armed", 60, 0.05, "the child to start")
        parent.kill()  # no clean-up of its own: only the kernel can tell the child
        parent.wait(30)
        wait_for(lambda: out.read_text() != "armed", 60, 0.05, "the child to hear of it")
        assert out.read_text() == f"got {int(signal.SIGTERM)}"
    finally:
        try:
            os.kill(child_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
