"""Domain errors, free of any framework. The CLI and HTTP layers translate them at the edge."""

from __future__ import annotations


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
    """A request body or file is not JSON at all (HTTP 400); ValidationFailed is for JSON of the wrong shape."""


class NotFound(LearnloopError):
    """A referenced row (trajectory, job, model version, dataset) does not exist."""


class Conflict(LearnloopError):
    """The request contradicts what is stored (e.g. an id reused for different content)."""


class StoreUnavailable(LearnloopError):
    """The database or the learnloop server cannot be reached right now; retry later."""


class Overloaded(LearnloopError):
    """The server's ingest queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TruncationRefused(ValidationFailed):
    """Too many training examples are longer than max_length; ``check`` holds the length report."""

    def __init__(self, message: str, check: object = None) -> None:
        super().__init__(message, [("max_length", message)])
        self.check = check
