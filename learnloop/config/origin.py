"""Where the effective settings came from: the TOML file read (or where none was found), the
``LEARNLOOP_*`` variables set, and what chose the data dir. ``learnloop config`` prints it, and a
command that fell back to the defaults (no file, ``~/.learnloop``) says so.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CONFIG_ENV = "LEARNLOOP_CONFIG"
DATA_DIR_ENV = "LEARNLOOP_DATA_DIR"
DEFAULT_CONFIG_FILE = "learnloop.toml"  # the same name learnloop.config reads


@dataclass(frozen=True)
class ConfigOrigin:
    file: Path | None  # the TOML file read (absolute); None when there was none
    named_by_env: bool  # LEARNLOOP_CONFIG named it
    looked_in: Path  # the working directory, where learnloop.toml was looked for
    env: tuple[str, ...]  # LEARNLOOP_* variables set (names only: values may be secrets)
    data_dir_from: str  # "LEARNLOOP_DATA_DIR", the file's path, or "default"

    @property
    def fell_back(self) -> bool:
        """No config file and no data dir chosen: every setting is a default, the data dir ~/.learnloop."""
        return self.file is None and self.data_dir_from == "default"

    def lines(self, data_dir: Path) -> list[str]:
        """What `learnloop config` prints first: the file(s), the variables and the data dir it used."""
        if self.file is not None:
            how = f" (named by {CONFIG_ENV})" if self.named_by_env else ""
            here = self.looked_in / DEFAULT_CONFIG_FILE
            if self.named_by_env and here.is_file() and here.resolve() != self.file:
                how += f"; {here} is not read"
            file = f"config file: {self.file}{how}"
        else:
            file = f"config file: none (no {DEFAULT_CONFIG_FILE} in {self.looked_in}, {CONFIG_ENV} unset)"
        env = f"environment: {', '.join(self.env)}" if self.env else "environment: no LEARNLOOP_* variables"
        source = "the default" if self.data_dir_from == "default" else self.data_dir_from
        return [file, env, f"data dir: {data_dir} (from {source})"]

    def fallback_note(self, data_dir: Path) -> str:
        return (
            f"learnloop: no {DEFAULT_CONFIG_FILE} in {self.looked_in} and {CONFIG_ENV} unset: using the "
            f"defaults, data dir {data_dir}. Run from your project's folder, or set {CONFIG_ENV}."
        )


def config_origin(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> ConfigOrigin:
    """Where ``load_settings()`` would take its values from, in this environment and directory."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    named = environ.get(CONFIG_ENV)
    candidate = Path(named) if named else cwd / DEFAULT_CONFIG_FILE
    file = candidate.resolve() if candidate.is_file() else None
    env = tuple(sorted(k for k in environ if k.startswith("LEARNLOOP_")))
    if environ.get(DATA_DIR_ENV):
        data_dir_from = DATA_DIR_ENV
    elif file is not None and _names_data_dir(file):
        data_dir_from = str(file)
    else:
        data_dir_from = "default"
    return ConfigOrigin(file, bool(named), cwd, env, data_dir_from)


def _names_data_dir(file: Path) -> bool:
    try:
        return "data_dir" in tomllib.loads(file.read_text())
    except (OSError, ValueError):
        return False  # load_settings reports an unreadable file itself
