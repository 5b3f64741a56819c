"""JSONL import: one trajectory per line (the `TrajectoryIn` shape), each file stored all-or-nothing.

A file is read twice, streaming: the first pass validates every line and reports every problem
with its line number before anything is written; the second pass inserts the records in chunks
inside one transaction. Memory stays bounded by the chunk size, and a failure at any point
(including the database rejecting a row) rolls the whole file back.

Lines without an ``id`` get one derived from their content and line number, so importing the
same file twice stores it once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from learnloop.errors import NotFound, ValidationFailed, validation_problems
from learnloop.store.db import Database
from learnloop.store.records import TRAJECTORY, TrajectoryIn
from learnloop.store.trajectories import DEFAULT_HOLDOUT_FRACTION, ingest
from learnloop.windows import fill_windows

CHUNK_SIZE = 500
# Problems kept for the report; a file of a million bad lines must not exhaust memory.
MAX_PROBLEMS = 1000
# Problems named in the exception message itself; failure_report lists the rest.
SHOWN_PROBLEMS = 20

Problem = tuple[str, str]


@dataclass
class ImportResult:
    """What importing one file did. ``records`` counts non-blank lines."""

    path: str
    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    feedback_inserted: int = 0
    scores_inserted: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def derived_id(record: dict[str, Any], line_no: int) -> str:
    """A stable id for a line that has none: the same content on the same line gives the same id.

    The line number is part of it because two identical lines are two separate interactions.
    """
    content = {k: v for k, v in record.items() if k != "id"}
    canonical = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    digest = hashlib.sha256(f"{line_no}\n{canonical}".encode()).hexdigest()
    return f"jsonl-{digest[:32]}"


def parse_line(raw: bytes | str, line_no: int) -> tuple[TrajectoryIn | None, list[Problem]]:
    """Parse one JSONL line. Returns (record, []) or (None, problems); a blank line is (None, [])."""
    where = f"line {line_no}"
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, [(where, f"not valid UTF-8 ({exc.reason} at byte {exc.start})")]
    else:
        text = raw
    if line_no == 1:
        text = text.lstrip("\ufeff")  # editors on Windows write a byte-order mark
    if not text.strip():
        return None, []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [(where, f"invalid JSON: {exc.msg} (at character {exc.pos + 1})")]
    if not isinstance(data, dict):
        return None, [(where, f"expected a JSON object (one trajectory), got {type(data).__name__}")]
    if data.get("id") is None:
        data = {**data, "id": derived_id(data, line_no)}
    try:
        return TRAJECTORY.validate_python(data), []
    except ValidationError as exc:
        return None, [(f"{where}: {loc}", msg) for loc, msg in validation_problems(exc)]


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        with path.open("rb") as fh:
            yield from enumerate(fh, start=1)
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist (was it moved while being imported?).") from None
    except OSError as exc:
        raise ValidationFailed(f"Cannot read {path}: {exc.strerror or exc}. Check the path and its permissions.") from None


def validate_jsonl(path: Path | str) -> int:
    """Check every line of ``path``; return the number of records or raise ValidationFailed listing every problem."""
    path = Path(path)
    problems: list[Problem] = []
    total_problems = 0
    records = 0
    for line_no, raw in _lines(path):
        record, line_problems = parse_line(raw, line_no)
        if record is not None:
            records += 1
        total_problems += len(line_problems)
        problems.extend(line_problems[: max(0, MAX_PROBLEMS - len(problems))])
    if total_problems:
        raise ValidationFailed(_summary(path, problems, total_problems), problems)
    return records


def iter_chunks(path: Path | str, chunk_size: int = CHUNK_SIZE) -> Iterator[list[TrajectoryIn]]:
    """Validated records of ``path`` in chunks; raises ValidationFailed at the first bad line."""
    path = Path(path)
    chunk: list[TrajectoryIn] = []
    for line_no, raw in _lines(path):
        record, problems = parse_line(raw, line_no)
        if problems:
            # The file passed validation, so it changed under us: refuse rather than store part of it.
            raise ValidationFailed(_summary(path, problems, len(problems), changed=True), problems)
        if record is not None:
            chunk.append(record)
            if len(chunk) >= chunk_size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def import_jsonl(
    db: Database,
    path: Path | str,
    *,
    project: str = "default",
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    chunk_size: int = CHUNK_SIZE,
    window: str = "1h",
) -> ImportResult:
    """Import one JSONL file all-or-nothing. Re-importing the same file is a no-op (all duplicates)."""
    path = Path(path)
    if path.is_dir():
        raise ValidationFailed(f"{path} is a folder; import_jsonl takes one file (see jsonl_files).")
    records = validate_jsonl(path)
    result = ImportResult(path=str(path), records=records)
    with db.session() as session:
        for chunk in iter_chunks(path, chunk_size):
            fill_windows(chunk, window)  # lines without a window: the capture.window their time falls in
            r = ingest(session, {"trajectories": chunk}, project=project, holdout_fraction=holdout_fraction)
            result.inserted += len(r.inserted)
            result.duplicates += len(r.duplicates)
            result.feedback_inserted += r.feedback_inserted
            result.scores_inserted += r.scores_inserted
    return result


def jsonl_files(path: Path | str) -> list[Path]:
    """The files an import of ``path`` covers: the file itself, or a folder's ``*.jsonl`` files in name order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(".jsonl") and not p.name.startswith("."))
        if not files:
            raise NotFound(f"{path} holds no *.jsonl files (one trajectory per line).")
        return files
    if not path.exists():
        raise NotFound(f"{path} does not exist. Pass a .jsonl file or a folder of them.")
    return [path]


def failure_report(exc: BaseException) -> str:
    """An import error as text for a person: the message, then every problem when it shows only some."""
    text = str(exc)
    problems = getattr(exc, "problems", None) or []
    if len(problems) > SHOWN_PROBLEMS:
        text += "\n\nAll problems found:\n" + "\n".join(f"  {loc}: {msg}" for loc, msg in problems)
    return text


def _summary(path: Path, problems: list[Problem], total: int, *, changed: bool = False) -> str:
    shown = "; ".join(f"{loc}: {msg}" for loc, msg in problems[:SHOWN_PROBLEMS])
    more = f" (and {total - SHOWN_PROBLEMS} more)" if total > SHOWN_PROBLEMS else ""
    why = " It changed while being imported." if changed else ""
    return (
        f"{path.name} is invalid — {total} problem(s): {shown}{more}.{why} "
        "Nothing from this file was stored; fix the lines named and import it again."
    )
