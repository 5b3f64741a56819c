"""Importing the traces teams already have: OTLP/JSON files, OpenAI chat-completion logs, Langfuse
exports. Each reader maps one file to trajectory records (the wire format, validated) with the
same mapping the live paths use; ``import_file`` stores them all-or-nothing, like a JSONL import.

Ids are derived from what the file says (trace and span ids, Langfuse trace ids, or a line's
content and number), so importing the same file twice stores it once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from learnloop.errors import ValidationFailed
from learnloop.store.db import Database
from learnloop.store.jsonl import (
    CHUNK_SIZE,
    NO_RULES,
    FileRules,
    ImportResult,
    Scan,
    import_jsonl,
    scan_files,
)
from learnloop.store.trajectories import DEFAULT_HOLDOUT_FRACTION, ingest
from learnloop.windows import fill_windows

FORMATS = ("jsonl", "otlp-json", "openai-chat", "langfuse")
# The file names a folder contributes, per format.
_SUFFIXES = {"otlp-json": (".json", ".jsonl"), "openai-chat": (".jsonl",)}
_SUFFIXES["langfuse"] = (".json", ".jsonl")


def _readers() -> dict[str, Callable[[Path], list[dict[str, Any]]]]:
    from learnloop.capture.formats.langfuse import read_langfuse
    from learnloop.capture.formats.openai_chat import read_openai_chat
    from learnloop.capture.formats.otlp_json import read_otlp_json

    return {"otlp-json": read_otlp_json, "openai-chat": read_openai_chat, "langfuse": read_langfuse}


def scan_format(path: Path | str, fmt: str) -> Scan:
    """The files an import of ``path`` in format ``fmt`` covers — the file, or a folder's files of
    that format (by suffix) in name order — and every other entry of the folder with the reason it
    is passed over (``store.jsonl.scan_files``: links out of the folder are never followed)."""
    if fmt not in FORMATS:
        raise ValidationFailed(f"Unknown import format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if fmt == "jsonl":
        return scan_files(path)  # the JSONL import's own rules
    return scan_files(path, _SUFFIXES[fmt], what=f"files to import as {fmt}")


def format_files(path: Path | str, fmt: str) -> list[Path]:
    """The files an import of ``path`` in format ``fmt`` reads (see ``scan_format``)."""
    return scan_format(path, fmt).files


def read_file(path: Path | str, fmt: str) -> list[dict[str, Any]]:
    """The validated trajectory records of one file in ``fmt`` (not ``jsonl``: that one streams).
    Raises ValidationFailed naming every problem found, or NotFound."""
    path = Path(path)
    readers = _readers()
    if fmt not in readers:
        raise ValidationFailed(f"Unknown import format {fmt!r}; choose one of {', '.join(readers)}.")
    if path.is_dir():
        raise ValidationFailed(f"{path} is a folder; read_file takes one file (see format_files).")
    return readers[fmt](path)


def import_file(
    db: Database,
    path: Path | str,
    fmt: str = "jsonl",
    *,
    project: str = "default",
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    window: str = "1h",
    rules: FileRules = NO_RULES,
) -> ImportResult:
    """Import one file in ``fmt``, all-or-nothing: an invalid file (or record) stores nothing.
    ``rules`` apply to JSONL files (``store.jsonl.FileRules``)."""
    if fmt == "jsonl":
        return import_jsonl(
            db, path, project=project, holdout_fraction=holdout_fraction, window=window, rules=rules
        )
    records = read_file(path, fmt)
    fill_windows(records, window)
    result = ImportResult(path=str(path), records=len(records))
    with db.session() as session:
        for start in range(0, len(records), CHUNK_SIZE):
            r = ingest(
                session,
                {"trajectories": records[start : start + CHUNK_SIZE]},  # type: ignore[typeddict-item]
                project=project,
                holdout_fraction=holdout_fraction,
            )
            result.inserted += len(r.inserted)
            result.duplicates += len(r.duplicates)
            result.feedback_inserted += r.feedback_inserted
            result.scores_inserted += r.scores_inserted
    return result


def file_problems(path: Path, problems: list[tuple[str, str]], what: str) -> ValidationFailed:
    """ValidationFailed for a file: every problem named, and that nothing from it was stored."""
    shown = "; ".join(f"{loc}: {msg}" for loc, msg in problems[:20])
    more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
    return ValidationFailed(
        f"{path.name} is not a valid {what} file — {len(problems)} problem(s): {shown}{more}. "
        "Nothing from this file was stored; fix it and import it again.",
        problems,
    )


def json_documents(path: Path) -> list[tuple[str, Any]]:
    """A file holding one JSON document, or one per line (JSONL), as (where, document) pairs.
    Raises ValidationFailed naming each line that is not JSON."""
    import json

    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationFailed(f"{path.name} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    except OSError as exc:
        raise ValidationFailed(f"Cannot read {path}: {exc.strerror or exc}.") from None
    try:
        return [("file", json.loads(text))]
    except ValueError:
        pass
    docs, problems = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            docs.append((f"line {n}", json.loads(line)))
        except ValueError as exc:
            problems.append((f"line {n}", f"invalid JSON: {exc}"))
    if problems:
        raise file_problems(path, problems, "JSON or JSONL")
    return docs
