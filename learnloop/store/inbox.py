"""The watched inbox: JSONL files dropped into ``<data dir>/inbox/`` are imported by the server.

Each file is imported all-or-nothing, then moved to ``inbox/processed/`` or, if it is invalid,
to ``inbox/failed/`` with ``<name>.error.txt`` beside it saying what was wrong.

A file still being written must not be imported half-way. Three rules guard this:

* only ``*.jsonl`` files are taken, so a writer can write ``name.jsonl.tmp`` and rename it
  (atomic on one filesystem) — the only safe way, and the one to use;
* a ``*.jsonl`` file is taken only once its size and modification time were the same on two
  consecutive polls, which covers writers that copy a file in place;
* where the OS can tell (Linux: ``/proc/<pid>/fdinfo``, for processes this server may inspect),
  a file some process has open for writing is not taken. A writer that closes and reopens, or
  runs as another user, defeats it: hence the rename.

A file that changes after it was imported is reported (log, and ``<name>.warning.txt`` beside
it in ``processed/``): what was appended was not imported.

Entries that are not regular files (symlinks, folders, devices, pipes, sockets) are never
followed or read: each is moved to ``failed/`` with the reason, or logged once when it cannot be
moved. A file over ``server.max_inbox_file_bytes`` (default: ``server.max_request_bytes``) is
refused the same way.

When the database is unreachable, files stay in the inbox and are retried on the next poll.
A crash between committing a file and moving it is harmless: re-importing it is a no-op.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from learnloop.config import Settings
from learnloop.errors import LearnloopError, NotFound, StoreUnavailable
from learnloop.paths import DataDir, data_dir
from learnloop.store.db import Database
from learnloop.store.jsonl import FileRules, ImportResult, failure_report, file_kind, import_jsonl

log = logging.getLogger("learnloop.inbox")

# How long after an import a file is watched for changes (appended lines were not imported).
GROWTH_WATCH_SECONDS = 60.0


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
        self._taken: dict[str, os.stat_result] = {}  # the stat of each file candidates() returned
        self._waiting: set[str] = set()
        self._reported: set[str] = set()  # entries that could not be moved aside, logged once
        self._watch_after: dict[Path, tuple[int, int, float]] = {}  # imported file: size, mtime, until
        server = settings.server
        self.max_bytes = server.max_inbox_file_bytes or server.max_request_bytes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- one poll -------------------------------------------------------------------------

    def candidates(self) -> list[Path]:
        """Regular ``*.jsonl`` files in the inbox whose size and mtime have not changed since the last
        call and that no process has open for writing. Other entries named ``*.jsonl`` (links,
        folders, devices, pipes) and files over the size limit are moved to ``failed/`` here."""
        self.dirs.ensure()
        ready: list[Path] = []
        current: dict[str, tuple[int, int]] = {}
        stats: dict[str, os.stat_result] = {}
        for entry in sorted(os.scandir(self.dirs.inbox), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.name.endswith(".jsonl"):
                continue
            try:
                st = entry.stat(follow_symlinks=False)  # the entry itself, never what a link points at
            except FileNotFoundError:  # renamed away between scandir and stat
                continue
            path = Path(entry.path)
            if not stat.S_ISREG(st.st_mode):
                self._refuse(
                    path,
                    f"{entry.name} is {file_kind(st.st_mode)}, not a regular file; the inbox never follows "
                    "or reads those. Drop the file itself (write name.jsonl.tmp, then rename it).",
                )
                continue
            if st.st_size > self.max_bytes:
                self._refuse(
                    path,
                    f"{entry.name} is {st.st_size} bytes, over the limit of {self.max_bytes} bytes "
                    "(server.max_inbox_file_bytes); split it into smaller files or raise the setting.",
                )
                continue
            signature = (st.st_size, st.st_mtime_ns)
            current[entry.name] = signature
            stats[entry.name] = st
            if self._seen.get(entry.name) == signature:
                ready.append(path)
        self._seen = current
        if ready:
            busy = open_for_writing({(stats[p.name].st_dev, stats[p.name].st_ino) for p in ready})
            for p in [p for p in ready if (stats[p.name].st_dev, stats[p.name].st_ino) in busy]:
                log.debug("inbox: %s is open for writing; waiting", p.name)
                ready.remove(p)
                self._seen.pop(p.name, None)  # stable again only after it is closed
        self._taken = {p.name: stats[p.name] for p in ready}
        return ready

    def poll_once(self) -> list[InboxOutcome]:
        """Import every file that is ready. Safe to call from any thread (one poll at a time)."""
        with self._lock:
            self._check_imported()
            outcomes = [self._import_one(path) for path in self.candidates()]
            for o in outcomes:
                if o.status != "retry":
                    self._seen.pop(o.name, None)
            return outcomes

    def _import_one(self, path: Path) -> InboxOutcome:
        taken = self._taken.get(path.name)
        rules = FileRules(
            regular_only=True,
            max_bytes=self.max_bytes,
            expect=(taken.st_dev, taken.st_ino) if taken is not None else None,
        )
        try:
            result = import_jsonl(
                self.db,
                path,
                project=self.settings.project,
                holdout_fraction=self.settings.datasets.holdout_fraction,
                window=self.settings.capture.window,
                rules=rules,
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
        if taken is not None:
            self._watch_after[dest] = (
                taken.st_size,
                taken.st_mtime_ns,
                time.monotonic() + GROWTH_WATCH_SECONDS,
            )
            self._check_imported()
        return InboxOutcome(path.name, "processed", moved_to=dest, result=result)

    def _check_imported(self) -> None:
        """Report an imported file that changed after it was taken: its new lines were not imported."""
        now = time.monotonic()
        for dest, (size, mtime, until) in list(self._watch_after.items()):
            try:
                st = os.stat(dest, follow_symlinks=False)
            except OSError:
                self._watch_after.pop(dest)
                continue
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                self._watch_after.pop(dest)
                message = (
                    f"{dest.name} changed after it was imported: it was {size} bytes when taken and is "
                    f"{st.st_size} bytes now. Only what it held when taken was imported; "
                    "whatever was written later was NOT. Drop the missing lines as a new file "
                    "(write name.jsonl.tmp, then rename it)."
                )
                log.warning("inbox: %s", message)
                with contextlib.suppress(OSError):
                    dest.with_name(dest.name + ".warning.txt").write_text(message + "\n", encoding="utf-8")
            elif now > until:
                self._watch_after.pop(dest)

    def _refuse(self, path: Path, reason: str) -> None:
        """Move an entry that must not be read to failed/ with the reason; log once if it cannot be moved."""
        try:
            self._fail(path, reason)
        except OSError as exc:
            if path.name not in self._reported:
                self._reported.add(path.name)
                log.warning("inbox: %s (it could not be moved to failed/: %s)", reason, exc.strerror or exc)

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


def open_for_writing(files: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """Of ``files`` ((device, inode) pairs), those some process has open for writing.

    Linux only (``/proc/<pid>/fd`` and ``fdinfo``), and only processes this one may inspect
    (its own user's, or all as root); elsewhere nothing can be told and the empty set is the
    answer: the size-and-time check and the ``.tmp``-then-rename rule remain.
    """
    found: set[tuple[int, int]] = set()
    proc = Path("/proc")
    if not files or not (proc / "self" / "fdinfo").is_dir():
        return found
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(proc / pid / "fd")
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                st = os.stat(proc / pid / "fd" / fd)
                if (st.st_dev, st.st_ino) not in files:
                    continue
                flags = _fd_flags((proc / pid / "fdinfo" / fd).read_text())
            except (OSError, ValueError):
                continue
            if flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
                found.add((st.st_dev, st.st_ino))
    return found


def _fd_flags(fdinfo: str) -> int:
    for line in fdinfo.splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8)
    raise ValueError("no flags line")
