"""The daemon: loop triggers, the job queue, the supervised training worker, control and recovery.

Public surface (heavy parts imported lazily)::

    from learnloop.daemon import Daemon, queue, loops
    queue.submit(db, "train", payload, priority="high")
    Daemon(settings, db).run()        # foreground; SIGTERM stops it within a training step

    @trigger("name") / @readiness_check("name")   # a user's own, over a LoopCheck (daemon/checks.py)
"""

from __future__ import annotations

from typing import Any

from learnloop.config.loops import DaemonSettings, LoopConfig, TriggerConfig

__all__ = [
    "Daemon",
    "DaemonSettings",
    "LoopCheck",
    "LoopConfig",
    "TriggerConfig",
    "readiness_check",
    "trigger",
]


def __getattr__(name: str) -> Any:
    if name == "Daemon":
        from learnloop.daemon.service import Daemon

        return Daemon
    if name == "LoopCheck":
        from learnloop.daemon.checks import LoopCheck

        return LoopCheck
    if name == "trigger":
        from learnloop.daemon.triggers import trigger

        return trigger
    if name == "readiness_check":
        from learnloop.daemon.readiness import readiness_check

        return readiness_check
    raise AttributeError(name)
