"""The log of `learnloop serve` and `learnloop daemon` on stderr: what changed, in lines a person reads
(or one JSON object a line for a collector), without the libraries' chatter or the dashboard's polls.

Libraries that talk at INFO (alembic's migration context on every schema check, transformers' load
notes, tqdm's bars from datasets and the hub) are held at WARNING unless the level is ``debug``; the
access log leaves out the requests a page or a monitor repeats every few seconds unless
``server.access_log_polls`` asks for them (a poll that fails is still logged).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys

# Loggers that report their own workings at INFO; a person running learnloop wants their warnings only.
CHATTY = (
    "alembic",
    "httpx",
    "httpcore",
    "urllib3",
    "filelock",
    "datasets",
    "transformers",
    "accelerate",
    "peft",
    "trl",
    "torch",
    "huggingface_hub",
    "sentence_transformers",
    "multipart",
    "asyncio",
)
# Requests repeated by pages and monitors: the dashboard's live fragments, streams and chart data, the
# status and health polls, the metrics scrape and the static assets.
POLL_PREFIXES = (
    "/static/",
    "/favicon",
    "/ui/live/",
    "/ui/stream/",
    "/ui/api/",
    "/v1/status",
    "/healthz",
    "/metrics",
)
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class QuietPolls(logging.Filter):
    """Drops uvicorn's access line of a successful poll (its args: client, method, path, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or len(args) < 5:
            return True
        path = str(args[2]).split("?", 1)[0]
        try:
            failed = int(args[4]) >= 400
        except (TypeError, ValueError):
            failed = False
        return failed or not is_poll(path)


def is_poll(path: str) -> bool:
    return path.startswith(POLL_PREFIXES)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def quiet_libraries() -> None:
    """Progress bars and library notices off, in this process and the ones it starts (set before the
    libraries are imported: they read these once)."""
    for key, value in (
        ("TQDM_DISABLE", "1"),
        ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
    ):
        os.environ.setdefault(key, value)


def configure_logging(level: str = "info", fmt: str = "text", *, access_polls: bool = False) -> None:
    """Set up the root logger on stderr (replacing any handler) for a long-running command."""
    quiet_libraries()
    numeric = logging.getLevelName(level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT, "%Y-%m-%d %H:%M:%S")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in CHATTY:
        logging.getLogger(name).setLevel(
            numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
        )
    # Python warnings (deprecations from libraries) go through the log, once each, at WARNING.
    logging.captureWarnings(True)
    access = logging.getLogger("uvicorn.access")
    for f in list(access.filters):
        if isinstance(f, QuietPolls):
            access.removeFilter(f)
    if not access_polls:
        access.addFilter(QuietPolls())
    from learnloop.masking import redact_logs

    redact_logs()  # no configured secret in the log, whatever a message carries
