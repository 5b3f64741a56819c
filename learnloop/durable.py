"""Writes that survive a crash or power loss: fsync of files and of the folders that name them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO


def fsync_file(fh: IO[bytes] | IO[str]) -> None:
    """Flush Python's buffer and make the file's contents durable."""
    fh.flush()
    os.fsync(fh.fileno())


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a file created, renamed or removed in it) durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; their renames are durable otherwise
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (deepest first), then ``folder`` itself."""
    for path in sorted(folder.rglob("*"), key=lambda p: -len(p.parts)):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(folder)
