"""Issue 20.7: `learnloop import FOLDER` is safe with odd folders, as the inbox is: a link out of the
folder is never followed, and every entry not imported is reported with its reason (a *.jsonl
entry that is no regular file in the folder is refused: the command fails, the rest is imported)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from api_support import LEARNLOOP, cli_env
from capture_support import stored_ids
from helpers import chat
from learnloop.errors import ValidationFailed
from learnloop.store import Database
from learnloop.store.jsonl import scan_jsonl


def _jsonl(path: Path, *ids: str) -> Path:
    path.write_text("".join(json.dumps({"id": i, "messages": chat("q", "a")}) + "\n" for i in ids))
    return path


def _run(tmp_path: Path, db: Database, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LEARNLOOP, "import", *args],
        env=cli_env(tmp_path / "data", LEARNLOOP_DATABASE_URL=db.url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def odd_folder(tmp_path: Path) -> Path:
    """A folder holding one of every kind of entry an import may meet."""
    folder = tmp_path / "drop"
    folder.mkdir()
    _jsonl(folder / "good.jsonl", "good")
    (folder / "same.jsonl").symlink_to("good.jsonl")  # a link inside: the same file, read once
    outside = _jsonl(tmp_path / "secret.jsonl", "outside")
    (folder / "escape.jsonl").symlink_to(outside)
    (folder / "dangling.jsonl").symlink_to(tmp_path / "gone.jsonl")
    (folder / "sub.jsonl").mkdir()
    os.mkfifo(folder / "pipe.jsonl")
    (folder / "notes.txt").write_text("not data")
    _jsonl(folder / ".hidden.jsonl", "hidden")
    return folder


def test_scan_reports_every_entry_with_its_reason(odd_folder: Path) -> None:
    scan = scan_jsonl(odd_folder)
    assert [p.name for p in scan.files] == ["good.jsonl"]
    reasons = {p.path.name: (p.refused, p.reason) for p in scan.passed}
    assert set(reasons) == {
        "same.jsonl",
        "escape.jsonl",
        "dangling.jsonl",
        "sub.jsonl",
        "pipe.jsonl",
        "notes.txt",
        ".hidden.jsonl",
    }
    assert reasons["same.jsonl"] == (False, "the same file as good.jsonl (read once, as that file)")
    assert reasons["escape.jsonl"][0] and "link out of the folder" in reasons["escape.jsonl"][1]
    assert reasons["dangling.jsonl"][0] and "dangling symbolic link" in reasons["dangling.jsonl"][1]
    assert reasons["sub.jsonl"][0] and "a folder" in reasons["sub.jsonl"][1]
    assert reasons["pipe.jsonl"][0] and "named pipe" in reasons["pipe.jsonl"][1]
    assert reasons["notes.txt"] == (False, "not named *.jsonl")
    assert reasons[".hidden.jsonl"][0] is False and "hidden" in reasons[".hidden.jsonl"][1]


def test_import_of_an_odd_folder_imports_what_is_inside_and_refuses_the_rest(
    odd_folder: Path, tmp_path: Path, sqlite_db: Database
) -> None:
    r = _run(tmp_path, sqlite_db, str(odd_folder))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert stored_ids(sqlite_db) == {"good"}  # never the file the link pointed out to
    for name, why in (
        ("escape.jsonl", "link out of the folder"),
        ("dangling.jsonl", "dangling"),
        ("sub.jsonl", "a folder"),
        ("pipe.jsonl", "named pipe"),
    ):
        assert f"refused {odd_folder / name}: " in r.stderr and why in r.stderr, (name, r.stderr)
    assert f"skipped {odd_folder / 'notes.txt'}: not named *.jsonl" in r.stderr
    assert "4 of 5 file(s) not imported" in r.stderr

    r = _run(tmp_path, sqlite_db, "--json", str(odd_folder))
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    skipped = {Path(x["path"]).name: x["refused"] for x in lines if "skipped" in x}
    assert skipped == {
        "escape.jsonl": True,
        "dangling.jsonl": True,
        "sub.jsonl": True,
        "pipe.jsonl": True,
        "notes.txt": False,
        ".hidden.jsonl": False,
        "same.jsonl": False,
    }
    assert [x["duplicates"] for x in lines if "records" in x] == [1]


def test_a_pipe_named_on_the_command_line_is_refused_not_waited_on(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "p.jsonl")
    with pytest.raises(ValidationFailed, match="named pipe, not a regular file"):
        scan_jsonl(tmp_path / "p.jsonl")
    target = _jsonl(tmp_path / "real.jsonl", "x")
    (tmp_path / "link.jsonl").symlink_to(target)  # named by the user: followed
    assert scan_jsonl(tmp_path / "link.jsonl").files == [target]
