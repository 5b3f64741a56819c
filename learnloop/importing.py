"""Importing a user's code by name: ``package.module``, ``path/to/file.py``, and an object in it
as ``module:name`` or ``file.py:name``."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any


def import_module(spec: str) -> ModuleType:
    """Import a dotted module name, or a ``.py`` file (no package or PYTHONPATH needed).

    A file is imported under a name derived from its resolved path, the same in every process,
    so two plugins both called ``rewards.py`` never replace each other and importing a file
    twice yields the same module. Raises ImportError (or whatever the module raises).
    """
    if not (spec.endswith(".py") or "/" in spec):
        return importlib.import_module(spec)
    path = Path(spec).expanduser().resolve()
    if not path.is_file():
        raise ImportError(f"no such file {path}")
    name = f"learnloop_user_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_object(spec: str) -> Any:
    """The object ``spec`` names: ``package.module:attr`` or ``path/to/file.py:attr`` (``attr``
    may be dotted). Raises ValueError for a malformed spec, ImportError or AttributeError."""
    module_name, sep, attr = spec.rpartition(":")  # rpartition: a file path may hold a colon
    if not sep or not module_name or not attr:
        raise ValueError(f"{spec!r} must look like 'package.module:name' or 'path/to/file.py:name'")
    obj: Any = import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
