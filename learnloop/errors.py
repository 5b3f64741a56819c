"""Domain errors, free of any framework. The CLI and HTTP layers translate them at the edge."""

from __future__ import annotations

from typing import Any


class LearnloopError(Exception):
    """Base of every error learnloop raises on purpose. The message says what was wrong and what to do."""


class ConfigError(LearnloopError):
    """The configuration is invalid or cannot be read."""


class ValidationFailed(LearnloopError):
    """Input records are malformed. ``problems`` lists each one as (location, message)."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class Unparsable(LearnloopError):
    """A request body or file is not JSON at all (HTTP 400); ValidationFailed is for JSON of the
    wrong shape."""


class NotFound(LearnloopError):
    """A referenced row (trajectory, job, model version, dataset) does not exist."""


class Conflict(LearnloopError):
    """The request contradicts what is stored (e.g. an id reused for different content)."""


class StoreUnavailable(LearnloopError):
    """The database or the learnloop server cannot be reached right now; retry later."""


class StoreError(LearnloopError):
    """The database failed on a statement for a reason that is not an outage (a trigger refused a
    row, the schema is missing); retrying the same write is not expected to help."""


class Overloaded(LearnloopError):
    """The server's ingest queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoLearningSignal(LearnloopError):
    """A training run found nothing to learn from (every sample of its prompts scored alike, or none
    reached the bar) and stopped before training on nothing. ``stats`` says what it saw."""

    def __init__(self, message: str, stats: dict[str, float] | None = None) -> None:
        super().__init__(message)
        self.stats = stats or {}


class UpstreamFailed(LearnloopError):
    """An upstream provider answered with an error, timed out, or could not be reached.

    ``status`` is what a client should get (the upstream's own 4xx/429/5xx, 504 for a timeout, 502 when
    unreachable), ``error`` its OpenAI-shaped error object (the upstream's, when it sent one),
    ``retry_after`` its Retry-After in seconds when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        error: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error or {"message": message, "type": "upstream_error", "param": None, "code": None}
        self.retry_after = retry_after


class TruncationRefused(ValidationFailed):
    """Too many training examples are longer than max_length; ``check`` holds the length report."""

    def __init__(self, message: str, check: object = None) -> None:
        super().__init__(message, [("max_length", message)])
        self.check = check


def error_location(err: Any) -> str:
    """A pydantic error's location as ``trajectories.0.messages.1.role``; the checks that look
    inside a whole record (text, repeated ids) add the path they found under it."""
    parts = [str(p) for p in err["loc"]]
    inner = (err.get("ctx") or {}).get("path")
    if err.get("type") == "conflicting_repeat" and inner:
        parts = [inner]  # said from the batch's root: the path is the whole location
    elif inner:
        parts.append(inner)
    return ".".join(p for p in parts if p)


def validation_problems(exc: Any, prefix: str = "") -> list[tuple[str, str]]:
    """A pydantic ``ValidationError`` as (location, message) pairs, the location dotted like
    ``trajectories.0.messages.1.role`` and put under ``prefix`` when one is given."""
    problems = []
    for err in exc.errors():
        loc = error_location(err)
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        problems.append((loc or "(root)", err["msg"]))
    return problems


def problems_text(exc_or_problems: Any, limit: int = 10) -> str:
    """``field: message; field: message`` for a pydantic error or a list of problems, at most ``limit``."""
    problems = exc_or_problems if isinstance(exc_or_problems, list) else validation_problems(exc_or_problems)
    shown = "; ".join(f"{loc}: {msg}" for loc, msg in problems[:limit])
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return shown + more


def invalid(exc: Any, what: str = "input", prefix: str = "") -> ValidationFailed:
    """``ValidationFailed`` for a pydantic error: "Invalid <what> — field: message; ..." with the problems."""
    problems = validation_problems(exc, prefix)
    return ValidationFailed(f"Invalid {what} — {problems_text(problems)}.", problems)
