"""What one check of a loop knows, and the registries of the functions that read it.

Triggers (``daemon/triggers.py``) say why a cycle should start; readiness checks
(``daemon/readiness.py``) say what must hold first. Both are plain functions of a :class:`LoopCheck`,
registered by name. The built-ins run for every loop, in the order they were registered; a user's
own run for the loops that name them (``triggers.custom``, ``triggers.custom_checks``), once the
modules in ``[daemon] trigger_modules`` have registered them::

    from learnloop.daemon import LoopCheck, readiness_check, trigger

    @trigger("weekend")
    def weekend(check: LoopCheck) -> str | None:
        if check.new_examples and check.now.weekday() >= 5:
            return f"weekend batch: {check.new_examples} new {check.unit}"
        return None

    @readiness_check("gpu_free")
    def gpu_free(check: LoopCheck) -> tuple[bool, str]:
        free = free_gpus()
        return free > 0, f"{free} GPU(s) free"
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, TypeVar

from learnloop.config import Settings
from learnloop.config.loops import LoopConfig
from learnloop.daemon import history, tally
from learnloop.errors import ConfigError
from learnloop.importing import import_module
from learnloop.store.db import Database

UNIT = {
    "sft": "traces",
    "dpo": "pairs",
    "grpo": "groups",
    "grpo-on-policy": "prompts",
    "rft": "prompts",
    "kto": "labelled answers",
}

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class LoopCheck:
    """One check of one loop: the loop, the time, and what was counted (each counted once, on first use)."""

    db: Database
    settings: Settings
    loop: LoopConfig
    now: dt.datetime
    last_cycle_at: dt.datetime | None
    since: dt.datetime | None  # where the next cycle's data starts (None: all of it)
    # What checks found beyond their reason (the next cycle's plan, the backoff), for `loops status`.
    notes: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def counts(self) -> tally.Counts:
        return tally.count_examples(self.db, self.settings, self.loop, self.since, self.now)

    @property
    def new_examples(self) -> int:
        """Examples (traces, pairs or groups) the next cycle would train on."""
        return self.counts.examples

    @property
    def unit(self) -> str:
        """What one example is, in reasons: traces, pairs, groups."""
        return UNIT.get(self.loop.algorithm, "examples")

    @cached_property
    def holdout(self) -> int:
        """Held-out examples of the loop's selection."""
        return tally.count_holdout(self.db, self.settings, self.loop)

    @cached_property
    def quiet(self) -> tuple[int, dt.datetime | None, list[str]]:
        """Cycles in a row that improved nothing, when the last ended, and why each was quiet."""
        return history.quiet_cycles(self.db, self.loop.name)

    @cached_property
    def failures(self) -> tuple[int, dt.datetime | None]:
        """Cycles that failed in a row, and when the last of them ended."""
        return history.failed_cycles(self.db, self.loop.name)


@dataclass(frozen=True)
class Registered(Generic[F]):
    name: str
    fn: F
    builtin: bool


class Registry(Generic[F]):
    """Functions registered by name: built-ins run for every loop, a user's for the loops naming them."""

    def __init__(self, what: str, config_key: str) -> None:
        self.what = what  # "trigger", "readiness check"
        self.config_key = config_key  # where a loop names them, for messages
        self._entries: dict[str, Registered[F]] = {}

    def register(self, fn: F, name: str, *, builtin: bool = False, replace: bool = False) -> F:
        if not callable(fn):
            raise ConfigError(f"The {self.what} {name!r} is not callable.")
        if not name or len(name) > 64:
            raise ConfigError(f"A {self.what} name must have 1 to 64 characters, got {name!r}.")
        existing = self._entries.get(name)
        # Importing the module that defines it again (another process, a reload) is not a clash.
        if existing is not None and not replace and _origin(existing.fn) != _origin(fn):
            raise ConfigError(
                f"A {self.what} named {name!r} is already registered (by {_origin(existing.fn)}). "
                "Choose another name, or pass replace=True to override it."
            )
        if existing is not None and existing.builtin and not builtin:
            raise ConfigError(f"{name!r} is a built-in {self.what}; choose another name.")
        self._entries[name] = Registered(name, fn, builtin or (existing is not None and existing.builtin))
        return fn

    def decorator(self, name: str | None = None, *, replace: bool = False) -> Callable[[F], F]:
        def register(fn: F) -> F:
            return self.register(fn, name or fn.__name__, replace=replace)

        return register

    def names(self) -> list[str]:
        return list(self._entries)

    def for_loop(self, settings: Settings, names: Iterable[str]) -> list[Registered[F]]:
        """The built-ins, then the functions ``names`` asks for (user modules imported first)."""
        names = list(names)
        if names:
            load_modules(settings.daemon.trigger_modules)
        unknown = [n for n in names if n not in self._entries]
        if unknown:
            users = [n for n, e in self._entries.items() if not e.builtin]
            raise ConfigError(
                f"Unknown {self.what}(s) in {self.config_key}: {', '.join(unknown)}. Registered by "
                f"[daemon] trigger_modules: {', '.join(users) or 'none'}."
            )
        builtins = [e for e in self._entries.values() if e.builtin]
        return builtins + [self._entries[n] for n in names if not self._entries[n].builtin]


def load_modules(modules: Iterable[str]) -> None:
    """Import user modules (dotted names or .py paths) so their @trigger / @readiness_check run."""
    for spec in modules:
        if (spec.endswith(".py") or "/" in spec) and not Path(spec).expanduser().is_file():
            raise ConfigError(f"[daemon] trigger_modules: the file {spec!r} does not exist.")
        try:
            import_module(spec)
        except Exception as exc:
            raise ConfigError(
                f"[daemon] trigger_modules: could not import {spec!r}: {type(exc).__name__}: {exc}"
            ) from exc


def _origin(fn: object) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
