"""The control hook the training loop reads between optimizer steps: run, pause or stop.

Two implementations share one interface:

* ``InProcessControl`` — a thread-safe object for the embedded (in-process) runner and tests.
* ``FileControl`` — reads ``<output_dir>/control.json`` (``{"command": "pause"|"resume"|"stop"}``),
  written atomically by ``write_control`` (the CLI and the daemon), so a separate training process
  (``accelerate launch``) can be steered without sockets.

A ``stop`` is one-shot: the run that obeys it clears it (``acknowledge_stop``), so starting the
run again with the same output_dir resumes instead of stopping at once.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Literal

from learnloop import paths
from learnloop.durable import fsync_dir, fsync_file

State = Literal["run", "pause", "stop"]
Command = Literal["pause", "resume", "stop"]
CONTROL_FILE = paths.CONTROL_FILE
_STATE_OF: dict[str, State] = {"pause": "pause", "resume": "run", "stop": "stop"}


class Control:
    """In-process control; also the base of ``FileControl``. Methods are safe to call from any thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._state: State = "run"

    # -- commands -----------------------------------------------------------------------------
    def pause(self) -> None:
        self._set("pause")

    def resume(self) -> None:
        self._set("run")

    def stop(self) -> None:
        self._set("stop")

    def _set(self, state: State) -> None:
        with self._cond:
            self._state = state
            self._cond.notify_all()

    # -- what the loop calls ------------------------------------------------------------------
    def state(self) -> State:
        with self._cond:
            return self._state

    def wait(self, timeout: float) -> None:
        """Sleep until a command may have changed the state, or ``timeout`` seconds (no busy loop)."""
        with self._cond:
            self._cond.wait(timeout)

    def acknowledge_stop(self) -> None:
        """The run obeyed a stop; clear it so a later run resumes."""
        with self._cond:
            if self._state == "stop":
                self._state = "run"


InProcessControl = Control


class FileControl(Control):
    """Reads ``<output_dir>/control.json``; an in-process ``stop()`` (e.g. from SIGTERM) also works."""

    poll_s = 0.5

    def __init__(self, output_dir: Path | str) -> None:
        super().__init__()
        self.path = Path(output_dir) / CONTROL_FILE
        self._seen: tuple[int, int] | None = None
        self._file_state: State = "run"

    def _read_file(self) -> State:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._seen, self._file_state = None, "run"
            return "run"
        key = (st.st_mtime_ns, st.st_size)
        if key != self._seen:  # re-read only when it changed: this runs every step
            self._seen = key
            self._file_state = read_control(self.path.parent) or "run"
        return self._file_state

    def state(self) -> State:
        local = super().state()
        if local == "stop":
            return "stop"
        return self._read_file()

    def wait(self, timeout: float) -> None:
        super().wait(min(timeout, self.poll_s))

    def acknowledge_stop(self) -> None:
        super().acknowledge_stop()
        if read_control(self.path.parent) == "stop":
            write_control(self.path.parent, "resume")


def read_control(output_dir: Path | str) -> State | None:
    """The state the control file asks for, or None when there is none (or it is unreadable mid-write)."""
    try:
        data = json.loads((Path(output_dir) / CONTROL_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return None
    command = data.get("command") if isinstance(data, dict) else None
    return _STATE_OF.get(command) if isinstance(command, str) else None


def write_control(output_dir: Path | str, command: Command) -> Path:
    """Atomically write the control file: temp file, fsync, rename, fsync the folder."""
    if command not in _STATE_OF:
        raise ValueError(f"unknown control command {command!r}; use pause, resume or stop")
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CONTROL_FILE
    tmp = folder / f".{CONTROL_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as fh:
        json.dump({"command": command, "at": time.time()}, fh)
        fsync_file(fh)
    os.replace(tmp, target)
    fsync_dir(folder)
    return target
