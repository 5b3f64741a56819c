"""What `learnloop serve` checks before it has any effect: the port is free, and no other server
serves the same data dir. Both are checked before migrations run, a model loads or a daemon starts,
so a second server says why it cannot start instead of half-starting beside the first.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import IO

from learnloop.errors import ConfigError

SERVER_LOCK_FILE = "server.lock"  # in the data dir, locked (flock) while a server runs


def check_port(host: str, port: int) -> None:
    """Refuse a port another process listens on (bound as uvicorn binds it, with SO_REUSEADDR)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"Cannot listen on {host}:{port}: {exc}. Check --host / server.host.") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"Port {port} on {host} is already in use (another `learnloop serve`, or another "
                    f"program). Stop it, or choose another port: `learnloop serve --port {port + 1}` "
                    "or server.port in learnloop.toml. Nothing was started."
                ) from None
            raise ConfigError(
                f"Cannot listen on {host}:{port}: {exc.strerror}. Nothing was started."
            ) from None


def claim_data_dir(root: Path, url: str) -> IO[str]:
    """Hold the data dir's server lock for as long as the returned file stays open (the process's
    life); refuse, naming the holder, when another server holds it. The kernel drops the lock when
    its holder dies, so a crashed server never blocks the next."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / SERVER_LOCK_FILE
    handle = open(path, "a+")  # noqa: SIM115 - kept open: the lock lives as long as the file
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = _read(handle.read())
        handle.close()
        who = f"pid {holder.get('pid', '?')}, {holder.get('url', 'its URL unknown')}"
        raise ConfigError(
            f"The data dir {root} is already served by another `learnloop serve` ({who}). Use that "
            "server, stop it first, or give this one its own data dir (LEARNLOOP_DATA_DIR or data_dir "
            "in learnloop.toml). Nothing was started."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "url": url}) + "\n")
    handle.flush()
    return handle


def release(handle: IO[str] | None) -> None:
    if handle is not None:
        with contextlib.suppress(OSError):
            handle.seek(0)
            handle.truncate()
            handle.close()


def _read(text: str) -> dict:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
