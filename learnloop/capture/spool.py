"""The capture spool: batches on local disk until the store or server has them.

Every batch is written here *before* it is sent (write-ahead, one fsync per batch) and removed
once the store acknowledged it, so a process killed mid-send leaves the batch behind for the next
start to deliver. Redelivery is safe because the store ignores ids it already holds.

Layout under ``<data dir>/spool/``:

* ``<owner>.lock`` — held (``flock``) by a live writer for its whole life; a lock nobody holds
  marks a dead writer whose batches may be adopted;
* ``<owner>-<seq>.json`` — one ingest batch (the exact ``IngestBatch`` JSON body), newline-terminated;
* ``rejected/<owner>.jsonl`` — records the store refused for good (invalid, unknown trajectory),
  one per line with the reason, kept for a person to inspect instead of being dropped.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learnloop.durable import fsync_file
from learnloop.jsonio import dumps

log = logging.getLogger("learnloop.capture")

_BATCH_RE = re.compile(r"^(?P<owner>[0-9a-f]{32})-(?P<seq>\d{12})\.json$")


@dataclass(frozen=True)
class SpoolFile:
    path: Path
    owner: str
    seq: int


class Spool:
    """One writer's view of the spool folder: its lock, its batch files, adoption of dead writers' files."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.rejected_dir = self.root / "rejected"
        self.root.mkdir(parents=True, exist_ok=True)
        self.owner = uuid.uuid4().hex
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._lock_fd = self._take_lock()

    def _take_lock(self) -> int:
        # Lock under a temporary name, then rename: a visible *.lock is always already held,
        # so no other process can mistake a starting writer for a dead one.
        tmp = self.root / f".{self.owner}.lock.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.rename(tmp, self.root / f"{self.owner}.lock")
        return fd

    # -- writing --------------------------------------------------------------------------

    def next_path(self) -> Path:
        with self._seq_lock:
            self._seq += 1
            return self.root / f"{self.owner}-{self._seq:012d}.json"

    def write(self, body: bytes) -> Path:
        """Write one batch durably (fsync) and return its path."""
        path = self.next_path()
        with open(path, "wb") as f:
            f.write(body)
            f.write(b"\n")  # the terminator tells a complete file from one cut short by a kill
            fsync_file(f)
        if self._lock_fd < 0:
            # Written after close(): leave a free lock so the next start adopts the file.
            (self.root / f"{self.owner}.lock").touch()
        return path

    def remove(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def reject(self, kind: str, record: Any, reason: str) -> None:
        """Keep a record the store refused for good, with the reason, instead of dropping it."""
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        # jsonio's encoder: it writes any record whole, however deeply nested (the reason it may be here).
        line = dumps({"kind": kind, "reason": reason, "record": record}).decode()
        with open(self.rejected_dir / f"{self.owner}.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")
            fsync_file(f)
        log.error(
            "learnloop capture: a %s record cannot be stored (%s); set aside in %s",
            kind,
            reason,
            self.rejected_dir,
        )

    # -- recovery -------------------------------------------------------------------------

    def adopt_orphans(self) -> list[Path]:
        """Take over the batch files of writers that died (their lock is free), oldest first.

        Each file is renamed into this writer's name space, so exactly one live writer owns it.
        """
        adopted: list[Path] = []
        for lock_path in sorted(self.root.glob("*.lock"), key=_mtime):
            dead = lock_path.stem
            if dead == self.owner:
                continue
            try:
                fd = os.open(lock_path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its writer is alive
                for f in self._files_of(dead):
                    target = self.next_path()
                    os.rename(f.path, target)
                    adopted.append(target)
                lock_path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        for tmp in self.root.glob(".*.lock.tmp"):
            # A writer killed between creating and publishing its lock: nothing was written under it.
            if time.time() - _mtime(tmp) > 60:
                tmp.unlink(missing_ok=True)
        return adopted

    def _files_of(self, owner: str) -> list[SpoolFile]:
        out = []
        for p in self.root.glob(f"{owner}-*.json"):
            m = _BATCH_RE.match(p.name)
            if m:
                out.append(SpoolFile(p, owner, int(m["seq"])))
        return sorted(out, key=lambda f: f.seq)

    def read(self, path: Path) -> bytes | None:
        """A batch's body, or None when the file was cut short (its writer died before the fsync)."""
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            return None
        return data[:-1]

    def pending_count(self) -> int:
        return sum(1 for p in self.root.glob("*.json") if _BATCH_RE.match(p.name))

    def close(self) -> None:
        """Release the lock; this writer's remaining files stay for the next start to adopt."""
        if self._lock_fd < 0:
            return
        lock_path = self.root / f"{self.owner}.lock"
        if not self._files_of(self.owner):
            lock_path.unlink(missing_ok=True)
        os.close(self._lock_fd)
        self._lock_fd = -1


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def spool_status(root: Path) -> dict[str, Any]:
    """What waits in a spool folder: batches and records per writer (live or dead), refused records."""
    root = Path(root)
    writers: dict[str, dict[str, Any]] = {}
    if root.is_dir():
        for p in sorted(root.glob("*.json")):
            m = _BATCH_RE.match(p.name)
            if not m:
                continue
            w = writers.setdefault(
                m["owner"], {"batches": 0, "records": 0, "alive": _alive(root / f"{m['owner']}.lock")}
            )
            w["batches"] += 1
            try:
                data = p.read_bytes()
                body = json.loads(data) if data.endswith(b"\n") else {}
            except (OSError, ValueError):
                body = {}
            w["records"] += sum(len(body.get(k) or []) for k in ("trajectories", "feedback", "scores"))
    rejected = 0
    if (root / "rejected").is_dir():
        for p in (root / "rejected").glob("*.jsonl"):
            with open(p, "rb") as f:
                rejected += sum(1 for _ in f)
    return {
        "spool": str(root),
        "batches": sum(w["batches"] for w in writers.values()),
        "records": sum(w["records"] for w in writers.values()),
        "writers": [{"owner": o, **w} for o, w in writers.items()],
        "rejected_records": rejected,
    }


def _alive(lock_path: Path) -> bool:
    """Whether a live writer holds this lock (a missing lock file counts as dead)."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
