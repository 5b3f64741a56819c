"""JSONL import: one trajectory per line (the `TrajectoryIn` shape), each file stored all-or-nothing.

A file is read twice, streaming: the first pass validates every line and reports every problem
with its line number before anything is written; the second pass inserts the records in chunks
inside one transaction. Memory stays bounded by the chunk size, and a failure at any point
(including the database rejecting a row) rolls the whole file back.

Lines without an ``id`` get one derived from their content and line number, so importing the
same file twice stores it once.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from learnloop.errors import LearnloopError, NotFound, ValidationFailed
from learnloop.jsonio import NestedTooDeep, loads, short_path
from learnloop.store.db import Database
from learnloop.store.records import TRAJECTORY, TrajectoryIn, error_location, orjson
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
        data = loads(text)
    except NestedTooDeep as exc:
        return None, [(f"{where}: {short_path(exc.path) or '(record)'}", exc.msg)]
    except json.JSONDecodeError as exc:
        return None, [(where, f"invalid JSON: {exc.msg} (at character {exc.pos + 1})")]
    if not isinstance(data, dict):
        return None, [(where, f"expected a JSON object (one trajectory), got {type(data).__name__}")]
    if data.get("id") is None:
        data = {**data, "id": derived_id(data, line_no)}
    try:
        return TRAJECTORY.validate_python(data), []
    except ValidationError as exc:
        return None, [(f"{where}: {error_location(err) or '(record)'}", err["msg"]) for err in exc.errors()]


@dataclass(frozen=True)
class FileRules:
    """What a file must be before it is read (the inbox's rules; ``learnloop import`` has none).

    ``regular_only``: refuse anything but a regular file, checked on the opened descriptor, and
    never follow a symlink (so an entry swapped after the inbox's scan is still caught).
    ``max_bytes``: refuse a larger file. ``expect``: the (device, inode) the caller checked.
    """

    regular_only: bool = False
    max_bytes: int | None = None
    expect: tuple[int, int] | None = None


NO_RULES = FileRules()


def _open(path: Path, rules: FileRules) -> Any:
    if not rules.regular_only and rules.max_bytes is None:
        return path.open("rb")
    # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: a symlink is refused.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)
        if rules.regular_only and not stat.S_ISREG(st.st_mode):
            raise ValidationFailed(
                f"{path.name} is not a regular file ({file_kind(st.st_mode)}); it was not read."
            )
        if rules.expect is not None and (st.st_dev, st.st_ino) != rules.expect:
            raise ValidationFailed(
                f"{path.name} was replaced by another file while being taken; it was not read."
            )
        if rules.max_bytes is not None and st.st_size > rules.max_bytes:
            raise ValidationFailed(
                f"{path.name} is {st.st_size} bytes, over the limit of {rules.max_bytes} "
                "(server.max_inbox_file_bytes); split it into smaller files "
                "(or raise the setting). Nothing from it was stored."
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _lines(path: Path, rules: FileRules = NO_RULES) -> Iterator[tuple[int, bytes]]:
    try:
        with _open(path, rules) as fh:
            for line_no, raw in enumerate(fh, start=1):
                if (
                    rules.max_bytes is not None and fh.tell() > rules.max_bytes
                ):  # grew past the limit while read
                    raise ValidationFailed(
                        f"{path.name} grew over {rules.max_bytes} bytes (server.max_inbox_file_bytes) "
                        "while being read. Nothing from it was stored."
                    )
                yield line_no, raw
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist (was it moved while being imported?).") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValidationFailed(
                f"{path.name} is a symbolic link, which is never followed here (it was swapped in after "
                "the folder was read). It was not read."
            ) from None
        raise ValidationFailed(
            f"Cannot read {path}: {exc.strerror or exc}. Check the path and its permissions."
        ) from None


def validate_jsonl(path: Path | str, rules: FileRules = NO_RULES) -> int:
    """Check every line of ``path``; return the number of records or raise ValidationFailed listing
    every problem.

    An id on two lines with different content is a problem naming both lines (the same id with
    the same content is a duplicate, stored once).
    """
    path = Path(path)
    problems: list[Problem] = []
    total_problems = 0
    records = 0
    seen: dict[str, tuple[int, bytes]] = {}  # id: (first line, digest of its content)
    for line_no, raw in _lines(path, rules):
        record, line_problems = parse_line(raw, line_no)
        if record is not None:
            records += 1
            tid = record["id"]
            digest = _content_digest(record)
            first = seen.setdefault(tid, (line_no, digest))  # type: ignore[arg-type]
            if first[1] != digest:
                line_problems = [
                    (
                        f"line {line_no}: id",
                        f"repeats the id {tid!r} of line {first[0]} with different "
                        "content; one id is one record (an identical repeat is a harmless duplicate)",
                    )
                ]
        total_problems += len(line_problems)
        problems.extend(line_problems[: max(0, MAX_PROBLEMS - len(problems))])
    if total_problems:
        raise ValidationFailed(_summary(path, problems, total_problems), problems)
    return records


def _content_digest(record: TrajectoryIn) -> bytes:
    if orjson is not None:
        try:
            return hashlib.blake2b(orjson.dumps(record, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()
        except TypeError:
            pass
    text = json.dumps(record, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def iter_chunks(path: Path | str, chunk_size: int = CHUNK_SIZE) -> Iterator[list[TrajectoryIn]]:
    """Validated records of ``path`` in chunks; raises ValidationFailed at the first bad line."""
    for chunk, _, _ in _chunks_with_lines(Path(path), chunk_size):
        yield chunk


def _chunks_with_lines(
    path: Path, chunk_size: int, rules: FileRules = NO_RULES
) -> Iterator[tuple[list[TrajectoryIn], int, int]]:
    """As ``iter_chunks``, each chunk with the numbers of its first and last line."""
    chunk: list[TrajectoryIn] = []
    first = 0
    for line_no, raw in _lines(path, rules):
        record, problems = parse_line(raw, line_no)
        if problems:
            # The file passed validation, so it changed under us: refuse rather than store part of it.
            raise ValidationFailed(_summary(path, problems, len(problems), changed=True), problems)
        if record is not None:
            if not chunk:
                first = line_no
            chunk.append(record)
            if len(chunk) >= chunk_size:
                yield chunk, first, line_no
                chunk = []
    if chunk:
        yield chunk, first, line_no


def import_jsonl(
    db: Database,
    path: Path | str,
    *,
    project: str = "default",
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    chunk_size: int = CHUNK_SIZE,
    window: str = "1h",
    rules: FileRules = NO_RULES,
) -> ImportResult:
    """Import one JSONL file all-or-nothing. Re-importing the same file is a no-op (all duplicates).

    A row the database refuses makes the whole file fail with ValidationFailed naming the lines
    of the chunk it was in (the driver does not say which row); an unreachable or busy database
    raises as it is (StoreUnavailable, OperationalError): the file is fine, retry it later.
    """
    path = Path(path)
    if path.is_dir():
        raise ValidationFailed(f"{path} is a folder; import_jsonl takes one file (see jsonl_files).")
    records = validate_jsonl(path, rules)
    result = ImportResult(path=str(path), records=records)
    with db.session() as session:
        for chunk, first, last in _chunks_with_lines(path, chunk_size, rules):
            fill_windows(chunk, window)  # lines without a window: the capture.window their time falls in
            try:
                r = ingest(
                    session, {"trajectories": chunk}, project=project, holdout_fraction=holdout_fraction
                )
            except (LearnloopError, OperationalError):
                raise
            except Exception as exc:  # the database (or a value it cannot take) refused a row of these lines
                where = f"line {first}" if first == last else f"lines {first}-{last}"
                reason = (
                    str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                    if str(exc).strip()
                    else type(exc).__name__
                )
                raise ValidationFailed(
                    f"{path.name}: the database refused a record on {where}: {reason}. "
                    "Nothing from this file was stored; fix that record and import it again.",
                    [(where, reason)],
                ) from exc
            result.inserted += len(r.inserted)
            result.duplicates += len(r.duplicates)
            result.feedback_inserted += r.feedback_inserted
            result.scores_inserted += r.scores_inserted
    return result


@dataclass(frozen=True)
class Passed:
    """A folder entry an import does not read, and why. ``refused``: it is named ``*.jsonl`` (so it
    was meant to be imported) but is no regular file inside the folder; otherwise it is only not a
    JSONL file."""

    path: Path
    reason: str
    refused: bool = False


@dataclass
class Scan:
    """What importing a path covers: the files to read, and each entry passed over with its reason."""

    files: list[Path]
    passed: list[Passed]


def scan_files(
    path: Path | str,
    suffixes: tuple[str, ...] = (".jsonl",),
    what: str = "*.jsonl files (one trajectory per line)",
) -> Scan:
    """The files an import of ``path`` reads: the file itself, or a folder's files named with one of
    ``suffixes``, in name order, with every other entry of the folder and the reason it is not read.

    As the inbox does, a folder's entries are never followed out of it: a symbolic link is read
    only when it points at a regular file inside the folder (as that file); a link out of the
    folder, a dangling link, a sub-folder, a pipe, a socket or a device so named is refused.
    A file named on the command line is the user's choice: a link to it is followed, but it must
    be a regular file (a pipe cannot be read twice, as validation then import need).
    """
    path = Path(path)
    if not path.is_dir():
        if not path.exists():
            raise NotFound(f"{path} does not exist. Pass a file or a folder of them.")
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ValidationFailed(
                f"{path} is {file_kind(st.st_mode)}, not a regular file; an import reads each file twice "
                "(validation, then storing), so write it to a file first."
            )
        return Scan([path.resolve() if path.is_symlink() else path], [])
    folder = path.resolve()
    names = " or ".join(f"*{s}" for s in suffixes)
    files: dict[Path, Path] = {}  # by real path: a link and its target in the folder are one file
    passed: list[Passed] = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        entry_path = Path(entry.path)
        named = entry.name.endswith(suffixes) and not entry.name.startswith(".")
        target, reason = _folder_entry(entry, folder)
        if target is not None and named:
            first = files.setdefault(target.resolve(), target)
            if entry.is_symlink() or first.resolve() != target.resolve():
                passed.append(Passed(entry_path, f"the same file as {first.name} (read once, as that file)"))
        elif reason is None:
            hidden = entry.name.startswith(".")
            why = "hidden (its name starts with '.')" if hidden else f"not named {names}"
            passed.append(Passed(entry_path, why))
        else:
            passed.append(Passed(entry_path, reason, refused=named))
    if not files and not any(p.refused for p in passed):
        raise NotFound(f"{path} holds no {what}.")
    return Scan(list(files.values()), passed)


def scan_jsonl(path: Path | str) -> Scan:
    """``scan_files`` for JSONL: a file, or a folder's ``*.jsonl`` files."""
    return scan_files(path)


def _folder_entry(entry: os.DirEntry[str], folder: Path) -> tuple[Path | None, str | None]:
    """(the regular file inside ``folder`` the entry is, None) or (None, why it is not one); a link
    inside the folder gives its target."""
    try:
        st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None, "removed while the folder was read"
    if stat.S_ISREG(st.st_mode):
        return Path(entry.path), None
    if not stat.S_ISLNK(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            return None, "a folder (an import reads the folder it is given, not the folders inside)"
        return None, f"{file_kind(st.st_mode)}, not a regular file"
    link = os.readlink(entry.path)
    target = Path(entry.path).resolve()
    if not target.exists():
        return None, f"a dangling symbolic link (to {link})"
    if not target.is_relative_to(folder):
        return None, f"a symbolic link out of the folder (to {target}); links out are never followed"
    st = target.stat()
    if not stat.S_ISREG(st.st_mode):
        return None, f"a symbolic link to {file_kind(st.st_mode)} ({link}), not a regular file"
    return target, None


def jsonl_files(path: Path | str) -> list[Path]:
    """The files an import of ``path`` reads (see ``scan_jsonl`` for what it passes over)."""
    return scan_jsonl(path).files


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
