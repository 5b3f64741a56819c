"""The daemon: loop triggers, the job queue, the supervised training worker, control and recovery.

Public surface (heavy parts imported lazily)::

    from learnloop.daemon import Daemon, queue, loops
    queue.submit(db, "train", payload, priority="high")
    Daemon(settings, db).run()        # foreground; SIGTERM stops it within a training step
"""

from __future__ import annotations

from typing import Any

from learnloop.daemon.config import DaemonSettings, LoopConfig, TriggerConfig

__all__ = ["Daemon", "DaemonSettings", "LoopConfig", "TriggerConfig"]


def __getattr__(name: str) -> Any:
    if name == "Daemon":
        from learnloop.daemon.service import Daemon

        return Daemon
    raise AttributeError(name)
