"""Events: one row in the ``events`` table and one line in the daily log file under the data dir.

The log file is ``<data dir>/logs/learnloop-YYYY-MM-DD.log`` (UTC date). Every process appends
whole lines with O_APPEND, so several daemons and CLI commands can share one file; rotation is by
name, never by renaming (which is what makes logging's TimedRotatingFileHandler unsafe across processes).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from learnloop.masking import redact
from learnloop.store.db import Database
from learnloop.store.events import record_event

log = logging.getLogger("learnloop.daemon")
_log_dir: Path | None = None
_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_log(logs_dir: Path | None, retention_days: int = 30) -> None:
    """Send event lines to ``logs_dir`` from now on (None: database only); delete files past retention."""
    global _log_dir
    _log_dir = logs_dir
    if logs_dir is None:
        return
    logs_dir.mkdir(parents=True, exist_ok=True)
    cutoff = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=retention_days)
    for f in logs_dir.glob("learnloop-*.log"):
        try:
            if dt.date.fromisoformat(f.stem.removeprefix("learnloop-")) < cutoff:
                f.unlink()
        except ValueError:
            continue


def log_file(now: dt.datetime | None = None) -> Path | None:
    if _log_dir is None:
        return None
    now = now or dt.datetime.now(dt.UTC)
    return _log_dir / f"learnloop-{now.date().isoformat()}.log"


def write_line(kind: str, message: str, level: str = "info", **fields: Any) -> None:
    now = dt.datetime.now(dt.UTC)
    log.log(_LEVELS.get(level, logging.INFO), "%s %s", kind, message)
    path = log_file(now)
    if path is None:
        return
    extra = " ".join(
        f"{k}={json.dumps(v, default=str)}" for k, v in fields.items() if v not in (None, {}, [])
    )
    line = redact(  # the log files are read by people: no configured secret goes in
        f"{now.isoformat(timespec='milliseconds')} {level.upper():7} {kind:18} "
        f"{message}{' ' + extra if extra else ''}\n"
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError as exc:  # a full or read-only disk must not stop the daemon; the row still records it
        log.warning("cannot write %s: %s", path, exc)


def emit(
    target: Database | Session,
    kind: str,
    message: str = "",
    *,
    level: str = "info",
    loop: str | None = None,
    job_id: int | None = None,
    version_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Record an event (in the caller's transaction when given a session) and log it."""
    record_event(
        target, kind, message, level=level, loop=loop, job_id=job_id, version_id=version_id, data=data
    )
    write_line(kind, message, level, loop=loop, job=job_id, version=version_id)
