"""Adapter files on disk: hashing, immutable copies, verification, removal.

A version's folder under ``DataDir.adapter(version_id)`` is written once (copied into a hidden
temporary sibling, fsynced, made read-only, renamed into place) and never modified; its file
hashes are recorded with the version, so any later change is detected before it is served,
restored or deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import struct
import uuid
from pathlib import Path

from learnloop.errors import Conflict

_CHUNK = 1 << 20
# learnloop's note inside a prepared base model (when it was prepared): not part of the model's identity.
PREPARED_MARKER = "learnloop-model.json"
# Never copied into a version: training's run lock and temporary files.
_SKIP_NAMES = {".lock"}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(files: dict[str, str]) -> str:
    """One hash over a folder's files (relative name -> sha256), independent of listing order."""
    h = hashlib.sha256(b"learnloop-adapter\n")
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode())
    return h.hexdigest()


def _regular_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.name not in _SKIP_NAMES
    )


def hash_folder(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in _regular_files(folder)}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_immutable(src: Path, parent: Path) -> tuple[Path, dict[str, str]]:
    """Copy ``src``'s files into a new hidden folder under ``parent``; return it and its file hashes.

    The copy is hashed as it is written (what is recorded is what is on disk), fsynced, and made
    read-only. The caller renames it into place once the version's row is written.
    """
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    files: dict[str, str] = {}
    try:
        for path in _regular_files(src):
            rel = path.relative_to(src)
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()
            with open(path, "rb") as fin, open(dest, "wb") as fout:
                for chunk in iter(lambda: fin.read(_CHUNK), b""):
                    h.update(chunk)
                    fout.write(chunk)
                fout.flush()
                os.fsync(fout.fileno())
            files[rel.as_posix()] = h.hexdigest()
            dest.chmod(0o444)
        for d in sorted((p for p in tmp.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            _fsync_dir(d)
        _fsync_dir(tmp)
    except BaseException:
        remove_tree(tmp)
        raise
    return tmp, files


def verify(folder: Path, expected: dict[str, str]) -> list[str]:
    """Problems found comparing ``folder`` with the recorded hashes (empty: byte-identical)."""
    if not folder.is_dir():
        return [f"{folder} is missing"]
    actual = hash_folder(folder)
    problems = [f"{name}: missing" for name in sorted(set(expected) - set(actual))]
    problems += [f"{name}: not recorded with the version" for name in sorted(set(actual) - set(expected))]
    problems += [
        f"{name}: content changed (sha256 {actual[name][:12]}, recorded {expected[name][:12]})"
        for name in sorted(set(actual) & set(expected))
        if actual[name] != expected[name]
    ]
    return problems


def remove_tree(folder: Path) -> None:
    """Remove a folder whose files were made read-only."""
    if not folder.exists():
        return

    def _writable(func, path, _exc):  # noqa: ANN001 - shutil's onexc signature
        os.chmod(Path(path).parent, stat.S_IRWXU)
        os.chmod(path, stat.S_IRWXU)
        func(path)

    for p in [folder, *folder.rglob("*")]:
        if p.is_dir():
            p.chmod(stat.S_IRWXU)
    shutil.rmtree(folder, onerror=_writable)


def place(tmp: Path, final: Path) -> None:
    if final.exists():
        raise Conflict(f"{final} already exists; a version folder is never overwritten.")
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def safetensors_shapes(folder: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from the safetensors headers in ``folder`` (no tensor data read)."""
    shapes: dict[str, list[int]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with file.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for key, meta in header.items():
            if key != "__metadata__":
                shapes[key] = list(meta["shape"])
    return shapes


_base_hash_cache: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def model_folder_hash(folder: Path) -> str:
    """sha256 over a base model folder's files (weights, config, tokenizer): its revision.

    Cached per process by (path, sizes, mtimes): a 0.5 GB model takes about a second to hash.
    """
    files = [p for p in _regular_files(folder) if p.name != PREPARED_MARKER]
    key = (str(folder.resolve()), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _base_hash_cache:
        _base_hash_cache[key] = tree_digest({p.relative_to(folder).as_posix(): sha256_file(p) for p in files})
    return _base_hash_cache[key]
