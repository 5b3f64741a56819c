"""Child processes that do not outlive the process that started them."""

from __future__ import annotations

import ctypes
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def signalled_when_parent_dies(sig: signal.Signals) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: on Linux the kernel sends the child ``sig`` when the
    thread that started it dies, however it dies (``kill -9`` included). Elsewhere it does nothing,
    and the caller's own clean-up is all there is."""

    def arm() -> None:  # runs in the child between fork and exec
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
        except OSError:
            pass

    return arm
