"""The registry of heuristic reward functions, extended with the `@reward` decorator.

A reward function is a plain function ``f(trajectory: TrajectoryView) -> float | None``;
None means "does not apply to this trajectory" and stores nothing. Its scores are stored
under the function's name and version: bump the version when its logic changes and every
trajectory is scored again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from learnloop.errors import ConfigError
from learnloop.importing import import_module
from learnloop.scoring.view import TrajectoryView

RewardFn = Callable[[TrajectoryView], "float | None"]
F = TypeVar("F", bound=Callable[..., "float | None"])

# Names other scorers store under; a heuristic with one of them would mix into their aspect.
RESERVED_NAMES = frozenset({"feedback", "judge"})


@dataclass(frozen=True)
class RewardFunction:
    name: str
    version: str
    fn: RewardFn
    description: str = ""

    def __call__(self, trajectory: TrajectoryView) -> float | None:
        return self.fn(trajectory)


_REGISTRY: dict[str, RewardFunction] = {}


def reward(name: str | None = None, *, version: str = "1", replace: bool = False) -> Callable[[F], F]:
    """Register a heuristic reward function; returns it unchanged, so it stays a plain function.

    ::

        @learnloop.scoring.reward("polite", version="2")
        def polite(t: TrajectoryView) -> float | None:
            return 1.0 if "please" in t.completion.lower() else 0.0
    """

    def decorator(fn: F) -> F:
        register(fn, name=name or fn.__name__, version=version, replace=replace)
        return fn

    return decorator


def register(fn: RewardFn, *, name: str, version: str = "1", replace: bool = False) -> RewardFunction:
    """Add ``fn`` to the registry (what `@reward` does)."""
    if not callable(fn):
        raise ConfigError(f"Reward {name!r} is not callable.")
    if not name or len(name) > 128:
        raise ConfigError(f"Reward name {name!r} must have 1 to 128 characters.")
    if name in RESERVED_NAMES:
        raise ConfigError(f"Reward name {name!r} is reserved for {name} scores; choose another name.")
    version = str(version)
    if not version or len(version) > 64:
        raise ConfigError(f"Reward {name!r}: version {version!r} must have 1 to 64 characters.")
    entry = RewardFunction(name, version, fn, (fn.__doc__ or "").strip().split("\n")[0])
    existing = _REGISTRY.get(name)
    # Re-importing the module that defines a function (e.g. a reloaded plugin) is not a clash.
    same_origin = existing is not None and _origin(existing.fn) == _origin(fn)
    if existing is not None and not (replace or same_origin):
        raise ConfigError(
            f"A reward named {name!r} is already registered (by {_origin(existing.fn)}). "
            "Choose another name, or pass replace=True to override it."
        )
    _REGISTRY[name] = entry
    return entry


def unregister(name: str) -> None:
    if _REGISTRY.pop(name, None) is None:
        raise ConfigError(f"No reward named {name!r} is registered.")


def registered() -> list[RewardFunction]:
    """All registered reward functions (built-ins included), by name."""
    _ensure_builtins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get(names: Iterable[str]) -> list[RewardFunction]:
    """The registered functions with these names; an unknown name is an error listing the known ones."""
    _ensure_builtins()
    names = list(names)
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise ConfigError(
            f"Unknown reward function(s): {', '.join(unknown)}. Registered: "
            f"{', '.join(sorted(_REGISTRY)) or 'none'}."
        )
    return [_REGISTRY[n] for n in names]


def load_modules(modules: Iterable[str]) -> None:
    """Import user modules (dotted names or .py paths) so their `@reward` decorators run."""
    for spec in modules:
        try:
            if (spec.endswith(".py") or "/" in spec) and not Path(spec).expanduser().is_file():
                raise ConfigError(f"Reward module file {spec!r} does not exist.")
            import_module(spec)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"Could not import reward module {spec!r}: {type(exc).__name__}: {exc}"
            ) from exc


def _origin(fn: object) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _ensure_builtins() -> None:
    import learnloop.scoring.heuristics  # noqa: F401  (registers the built-ins on import)
    import learnloop.scoring.refinement  # noqa: F401
