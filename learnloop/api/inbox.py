"""The watched inbox: JSONL files dropped into ``<data dir>/inbox/`` are imported by the server.

Each file is imported all-or-nothing, then moved to ``inbox/processed/`` or, if it is invalid,
to ``inbox/failed/`` with ``<name>.error.txt`` beside it saying what was wrong.

A file still being written must not be imported half-way. Two rules guard this:

* only ``*.jsonl`` files are taken, so a writer can write ``name.jsonl.tmp`` and rename it
  (atomic on one filesystem) — the safe way, and the one to use for large files;
* a ``*.jsonl`` file is taken only once its size and modification time were the same on two
  consecutive polls, which covers writers that copy a file in place.

When the database is unreachable, files stay in the inbox and are retried on the next poll.
A crash between committing a file and moving it is harmless: re-importing it is a no-op.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from learnloop.config import Settings
from learnloop.errors import LearnloopError, NotFound, StoreUnavailable
from learnloop.paths import DataDir, data_dir
from learnloop.store.db import Database
from learnloop.store.jsonl import ImportResult, failure_report, import_jsonl

log = logging.getLogger("learnloop.inbox")


@dataclass
class InboxOutcome:
    """What one poll did with one file: ``processed``, ``failed``, ``retry`` (left in place for the
    next poll) or ``gone`` (removed by someone else meanwhile)."""

    name: str
    status: str
    moved_to: Path | None = None
    result: ImportResult | None = None
    error: str | None = None


class InboxWatcher:
    """Polls the inbox folder and imports stable ``*.jsonl`` files; run it with start()/stop()."""

    def __init__(self, db: Database, settings: Settings, *, poll_seconds: float | None = None) -> None:
        self.db = db
        self.settings = settings
        self.dirs: DataDir = data_dir(settings.data_dir)
        self.poll_seconds = poll_seconds if poll_seconds is not None else settings.server.inbox_poll_seconds
        self._seen: dict[str, tuple[int, int]] = {}
        self._waiting: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- one poll -------------------------------------------------------------------------

    def candidates(self) -> list[Path]:
        """``*.jsonl`` files in the inbox whose size and mtime have not changed since the last call."""
        self.dirs.ensure()
        ready: list[Path] = []
        current: dict[str, tuple[int, int]] = {}
        for entry in sorted(os.scandir(self.dirs.inbox), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.name.endswith(".jsonl") or not entry.is_file():
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:  # renamed away between scandir and stat
                continue
            signature = (st.st_size, st.st_mtime_ns)
            current[entry.name] = signature
            if self._seen.get(entry.name) == signature:
                ready.append(Path(entry.path))
        self._seen = current
        return ready

    def poll_once(self) -> list[InboxOutcome]:
        """Import every file that is ready. Safe to call from any thread (one poll at a time)."""
        with self._lock:
            outcomes = [self._import_one(path) for path in self.candidates()]
            for o in outcomes:
                if o.status != "retry":
                    self._seen.pop(o.name, None)
            return outcomes

    def _import_one(self, path: Path) -> InboxOutcome:
        try:
            result = import_jsonl(
                self.db,
                path,
                project=self.settings.project,
                holdout_fraction=self.settings.datasets.holdout_fraction,
                window=self.settings.capture.window,
            )
        except NotFound:
            # Taken away between the scan and the read (another watcher on a shared folder, a person).
            return InboxOutcome(path.name, "gone")
        except StoreUnavailable as exc:
            # Transient: the file is fine, the database is not. Keep it for the next poll,
            # and say so once rather than every poll of a long outage.
            level = logging.DEBUG if path.name in self._waiting else logging.WARNING
            self._waiting.add(path.name)
            log.log(level, "inbox: %s left in place, database unavailable: %s", path.name, exc)
            return InboxOutcome(path.name, "retry", error=str(exc))
        except LearnloopError as exc:
            return self._fail(path, failure_report(exc))
        except Exception as exc:  # a row the database refuses is the file's fault, not the server's
            log.exception("inbox: %s failed", path.name)
            return self._fail(path, f"{type(exc).__name__}: {exc}")
        self._waiting.discard(path.name)
        try:
            dest = _move(path, self.dirs.inbox_processed)
        except FileNotFoundError:  # another watcher imported (a no-op for us) and moved it first
            return InboxOutcome(path.name, "gone", result=result)
        log.info(
            "inbox: imported %s (%d inserted, %d duplicates)", path.name, result.inserted, result.duplicates
        )
        return InboxOutcome(path.name, "processed", moved_to=dest, result=result)

    def _fail(self, path: Path, message: str) -> InboxOutcome:
        self._waiting.discard(path.name)
        dest = _move(path, self.dirs.inbox_failed)
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        dest.with_name(dest.name + ".error.txt").write_text(
            f"{path.name} was not imported ({stamp}); nothing from it was stored.\n\n{message}\n\n"
            "Fix the file and drop it into the inbox again.\n",
            encoding="utf-8",
        )
        log.warning("inbox: %s moved to failed/: %s", path.name, message)
        return InboxOutcome(path.name, "failed", moved_to=dest, error=message)

    # -- background thread ----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self.dirs.ensure()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="learnloop-inbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop polling; waits for an import in progress to finish (it is one transaction)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # the watcher must outlive any one bad poll
                log.exception("inbox: poll failed")


def _move(path: Path, folder: Path) -> Path:
    """Move ``path`` into ``folder`` without overwriting an earlier file of the same name."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / path.name
    n = 1
    while dest.exists() or dest.with_name(dest.name + ".error.txt").exists():
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        dest = folder / f"{path.stem}.{stamp}-{n}{path.suffix}"
        n += 1
    os.replace(path, dest)
    return dest
