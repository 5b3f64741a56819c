from __future__ import annotations

import json
import os
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api_support import free_port
from helpers import chat
from learnloop.api import create_app
from learnloop.config import Settings
from learnloop.paths import data_dir
from learnloop.store import Database
from learnloop.store.inbox import InboxWatcher
from learnloop.store.models import Trajectory


def _jsonl(n: int, start: int = 0) -> str:
    return "".join(json.dumps({"messages": chat(f"q{i}", f"a{i}")}) + "\n" for i in range(start, start + n))


def _count(db: Database) -> int:
    with db.read_session() as s:
        return s.scalar(select(func.count()).select_from(Trajectory)) or 0


def test_file_is_imported_only_once_stable_then_moved(settings: Settings, db: Database) -> None:
    watcher = InboxWatcher(db, settings)
    inbox = data_dir(settings.data_dir).ensure().inbox
    f = inbox / "batch.jsonl"
    f.write_text(_jsonl(3))
    assert watcher.poll_once() == []  # first sighting: maybe still being written
    with f.open("a") as fh:  # the writer appends more before the next poll
        fh.write(_jsonl(2, start=3))
    assert watcher.poll_once() == []
    assert _count(db) == 0 and f.exists()
    [outcome] = watcher.poll_once()
    assert outcome.status == "processed" and outcome.result is not None and outcome.result.inserted == 5
    assert not f.exists() and (inbox / "processed" / "batch.jsonl").exists()
    assert _count(db) == 5
    assert watcher.poll_once() == []


def test_tmp_and_hidden_files_are_ignored_until_renamed(settings: Settings, sqlite_db: Database) -> None:
    watcher = InboxWatcher(sqlite_db, settings)
    inbox = data_dir(settings.data_dir).ensure().inbox
    tmp = inbox / "x.jsonl.tmp"
    tmp.write_text(_jsonl(2))
    (inbox / ".hidden.jsonl").write_text(_jsonl(1, start=9))
    assert watcher.poll_once() == [] and watcher.poll_once() == []
    os.replace(tmp, inbox / "x.jsonl")
    watcher.poll_once()
    [outcome] = watcher.poll_once()
    assert outcome.name == "x.jsonl" and outcome.status == "processed"
    assert _count(sqlite_db) == 2


def test_invalid_file_goes_to_failed_with_error_beside_it(settings: Settings, db: Database) -> None:
    watcher = InboxWatcher(db, settings)
    inbox = data_dir(settings.data_dir).ensure().inbox
    lines = _jsonl(3).splitlines()
    lines[1] = '{"messages": [{"role": "robot", "content": "x"}]}'
    (inbox / "bad.jsonl").write_text("\n".join(lines) + "\n")
    (inbox / "good.jsonl").write_text(_jsonl(2))
    watcher.poll_once()
    outcomes = {o.name: o for o in watcher.poll_once()}
    assert outcomes["bad.jsonl"].status == "failed" and outcomes["good.jsonl"].status == "processed"
    failed = inbox / "failed" / "bad.jsonl"
    error = (inbox / "failed" / "bad.jsonl.error.txt").read_text()
    assert failed.exists() and "line 2: messages.0.role" in error and "nothing from it was stored" in error
    assert _count(db) == 2
    # The same name dropped again later does not overwrite the first failure.
    (inbox / "bad.jsonl").write_text("not json\n")
    watcher.poll_once()
    [again] = watcher.poll_once()
    assert again.status == "failed" and again.moved_to is not None and again.moved_to != failed
    assert (
        failed.read_text().count("\n") == 3
        and "invalid JSON" in Path(str(again.moved_to) + ".error.txt").read_text()
    )


def test_unreachable_database_leaves_files_for_the_next_poll(settings: Settings, tmp_path: Path) -> None:
    dead = Database(
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test", connect_args={"connect_timeout": 3}
    )
    watcher = InboxWatcher(dead, settings)
    inbox = data_dir(settings.data_dir).ensure().inbox
    (inbox / "a.jsonl").write_text(_jsonl(1))
    watcher.poll_once()
    [outcome] = watcher.poll_once()
    assert outcome.status == "retry" and (inbox / "a.jsonl").exists()
    assert list((inbox / "failed").iterdir()) == []
    # Still pending: the next poll tries again rather than waiting for another change.
    [outcome] = watcher.poll_once()
    assert outcome.status == "retry"


def test_app_lifespan_runs_and_stops_the_watcher(settings: Settings, db: Database) -> None:
    settings = settings.model_copy(
        update={
            "server": settings.server.model_copy(update={"inbox_poll_seconds": 0.05, "watch_inbox": True})
        }
    )
    app = create_app(settings, db)
    inbox = data_dir(settings.data_dir).inbox
    with TestClient(app) as client:
        watcher = app.state.inbox
        assert watcher is not None and watcher.running
        assert client.get("/healthz").json()["inbox"] == {"watching": True}  # no paths to anonymous callers
        (inbox / "drop.jsonl").write_text(_jsonl(4))
        deadline = time.monotonic() + 60
        while not (inbox / "processed" / "drop.jsonl").exists():
            assert time.monotonic() < deadline, "inbox file was not imported"
            time.sleep(0.05)
        assert _count(db) == 4
    assert not watcher.running
    quiet = create_app(settings, db, watch_inbox=False)
    with TestClient(quiet) as client:
        assert quiet.state.inbox is None
        assert client.get("/healthz").json()["inbox"]["watching"] is False


def test_file_removed_between_scan_and_import_is_skipped(settings: Settings, sqlite_db: Database) -> None:
    watcher = InboxWatcher(sqlite_db, settings)
    inbox = data_dir(settings.data_dir).ensure().inbox
    f = inbox / "shared.jsonl"
    f.write_text(_jsonl(2))
    watcher.poll_once()
    [ready] = watcher.candidates()
    f.unlink()  # e.g. another server watching the same folder took it
    outcome = watcher._import_one(ready)
    assert outcome.status == "gone" and _count(sqlite_db) == 0
    assert list((inbox / "failed").iterdir()) == []


# -- issue 16.6: links, folders, devices, sizes, files still being written ---------------------------


def _failed_reason(inbox: Path, name: str) -> str:
    return (inbox / "failed" / f"{name}.error.txt").read_text()


def test_links_folders_and_pipes_are_never_followed_or_read(
    settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    watcher = InboxWatcher(sqlite_db, settings)
    inbox = data_dir(settings.data_dir).ensure().inbox
    secret = tmp_path / "elsewhere.jsonl"
    secret.write_text(_jsonl(3))
    (inbox / "link.jsonl").symlink_to(secret)
    (inbox / "dangling.jsonl").symlink_to(tmp_path / "nothing-here")
    (inbox / "folder.jsonl").mkdir()
    (inbox / "folder.jsonl" / "inner.jsonl").write_text(_jsonl(1))
    os.mkfifo(inbox / "pipe.jsonl")  # opening it for reading would block forever
    assert watcher.poll_once() == [] and watcher.poll_once() == []
    assert _count(sqlite_db) == 0 and secret.read_text() == _jsonl(3)
    assert (inbox / "failed" / "link.jsonl").is_symlink()
    assert "a symbolic link, not a regular file" in _failed_reason(inbox, "link.jsonl")
    assert "a symbolic link" in _failed_reason(inbox, "dangling.jsonl")
    assert (
        "a folder" in _failed_reason(inbox, "folder.jsonl") and (inbox / "failed" / "folder.jsonl").is_dir()
    )
    assert "a named pipe" in _failed_reason(inbox, "pipe.jsonl")
    assert sorted(p.name for p in inbox.iterdir()) == ["failed", "processed"]


def test_entry_swapped_for_a_link_after_the_scan_is_not_read(
    settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    watcher = InboxWatcher(sqlite_db, settings)
    inbox = data_dir(settings.data_dir).ensure().inbox
    f = inbox / "swap.jsonl"
    f.write_text(_jsonl(1))
    watcher.poll_once()
    [ready] = watcher.candidates()
    secret = tmp_path / "secret.jsonl"
    secret.write_text(_jsonl(2, start=5))
    f.unlink()
    f.symlink_to(secret)
    outcome = watcher._import_one(ready)
    assert outcome.status == "failed" and "symbolic link" in (outcome.error or "")
    assert _count(sqlite_db) == 0


def test_unmovable_entry_is_logged_once(
    settings: Settings, sqlite_db: Database, tmp_path: Path, monkeypatch, caplog
) -> None:
    import learnloop.store.inbox as inbox_mod

    watcher = InboxWatcher(sqlite_db, settings)
    inbox = data_dir(settings.data_dir).ensure().inbox
    (inbox / "stuck.jsonl").mkdir()

    def refuse(path: Path, folder: Path) -> Path:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(inbox_mod, "_move", refuse)
    for _ in range(3):
        watcher.poll_once()
    assert sum("stuck.jsonl is a folder" in r.getMessage() for r in caplog.records) == 1


def test_file_over_the_size_limit_is_refused(settings: Settings, sqlite_db: Database) -> None:
    settings = settings.model_copy(
        update={"server": settings.server.model_copy(update={"max_inbox_file_bytes": 200})}
    )
    watcher = InboxWatcher(sqlite_db, settings)
    inbox = data_dir(settings.data_dir).ensure().inbox
    (inbox / "big.jsonl").write_text(_jsonl(10))
    (inbox / "small.jsonl").write_text(_jsonl(1))
    watcher.poll_once()
    [outcome] = watcher.poll_once()
    assert outcome.name == "small.jsonl" and outcome.status == "processed"
    reason = _failed_reason(inbox, "big.jsonl")
    assert "over the limit of 200 bytes" in reason and "server.max_inbox_file_bytes" in reason
    assert _count(sqlite_db) == 1
    default = InboxWatcher(
        sqlite_db,
        settings.model_copy(
            update={
                "server": settings.server.model_copy(
                    update={"max_inbox_file_bytes": None, "max_request_bytes": 4096}
                )
            }
        ),
    )
    assert default.max_bytes == 4096


def test_file_open_for_writing_is_not_taken(settings: Settings, sqlite_db: Database) -> None:
    watcher = InboxWatcher(sqlite_db, settings)
    inbox = data_dir(settings.data_dir).ensure().inbox
    f = inbox / "slow.jsonl"
    with f.open("w") as writer:
        writer.write(_jsonl(2))
        writer.flush()  # size and mtime now stay the same across polls, but the writer is not done
        for _ in range(3):
            assert watcher.poll_once() == []
        writer.write(_jsonl(1, start=2))
    watcher.poll_once()
    [outcome] = watcher.poll_once()
    assert outcome.status == "processed" and outcome.result is not None and outcome.result.inserted == 3


def test_file_that_grows_after_import_is_reported(settings: Settings, sqlite_db: Database, caplog) -> None:
    watcher = InboxWatcher(sqlite_db, settings)
    inbox = data_dir(settings.data_dir).ensure().inbox
    (inbox / "grow.jsonl").write_text(_jsonl(2))
    watcher.poll_once()
    [outcome] = watcher.poll_once()
    assert outcome.status == "processed" and outcome.moved_to is not None
    with outcome.moved_to.open("a") as late:  # a writer that still held the file appends
        late.write(_jsonl(1, start=2))
    watcher.poll_once()
    warning = (inbox / "processed" / "grow.jsonl.warning.txt").read_text()
    assert "changed after it was imported" in warning and "NOT" in warning
    assert any("changed after it was imported" in r.getMessage() for r in caplog.records)
    assert _count(sqlite_db) == 2
