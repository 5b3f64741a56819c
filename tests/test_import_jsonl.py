from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from api_support import poisoned_scores
from helpers import chat
from learnloop.errors import NotFound, ValidationFailed
from learnloop.store import Database
from learnloop.store.jsonl import derived_id, failure_report, import_jsonl, jsonl_files, validate_jsonl
from learnloop.store.models import Feedback, Score, Trajectory


def _line(i: int, **extra) -> dict:
    return {"messages": chat(f"question {i}", f"answer {i}"), **extra}


def _write(path: Path, records: list, *, raw_lines: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(r) for r in records]
    for line_no, text in (raw_lines or {}).items():
        lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _counts(db: Database) -> tuple[int, int, int]:
    with db.read_session() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Trajectory, Score, Feedback))  # type: ignore[return-value]


def test_import_stores_lines_and_reimport_is_a_noop(db: Database, tmp_path: Path) -> None:
    records = [
        _line(0, id="given", scenario="math", scores={"correct": 1.0, "style": 0.5}),
        _line(1, feedback={"thumbs": "up"}, tags=["a"]),
        _line(1, feedback={"thumbs": "up"}, tags=["a"]),  # same content, another line: another interaction
        {
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
            "source": "teacher",
        },
    ]
    f = _write(tmp_path / "a.jsonl", records)
    first = import_jsonl(db, f, chunk_size=2)
    assert (first.records, first.inserted, first.duplicates) == (4, 4, 0)
    assert (first.scores_inserted, first.feedback_inserted) == (2, 2)
    second = import_jsonl(db, f)
    assert (second.inserted, second.duplicates, second.scores_inserted, second.feedback_inserted) == (
        0,
        4,
        0,
        0,
    )
    assert _counts(db) == (4, 2, 2)
    with db.read_session() as s:
        ids = set(s.scalars(select(Trajectory.id)))
        teacher = s.scalars(select(Trajectory).where(Trajectory.source == "teacher")).one()
    assert "given" in ids
    assert derived_id(records[1], 2) in ids and derived_id(records[2], 3) in ids
    assert teacher.messages[1]["tool_calls"][0]["function"]["name"] == "weather"


def test_derived_id_depends_on_content_and_position() -> None:
    rec = _line(0)
    assert derived_id(rec, 1) == derived_id(json.loads(json.dumps(rec)), 1)
    assert derived_id(rec, 1) != derived_id(rec, 2)
    assert derived_id(rec, 1) != derived_id(_line(1), 1)
    assert len(derived_id(rec, 1)) <= 64


def test_malformed_file_reports_every_problem_by_line_and_stores_nothing(
    db: Database, tmp_path: Path
) -> None:
    records = [_line(i) for i in range(14)]
    records[11] = {"messages": [{"role": "robot", "content": "x"}]}  # line 12: bad field
    records[12] = {"messages": chat("q", "a"), "colour": "red"}  # line 13: unknown key
    f = _write(tmp_path / "bad.jsonl", records, raw_lines={7: '{"messages": [', 9: "[1, 2]"})
    with pytest.raises(ValidationFailed) as err:
        import_jsonl(db, f)
    locs = [loc for loc, _ in err.value.problems]
    assert locs[0] == "line 7" and "invalid JSON" in err.value.problems[0][1]
    assert "line 9" in locs
    assert any(loc.startswith("line 12: messages.0.role") for loc in locs)
    assert any(loc.startswith("line 13: colour") for loc in locs)
    assert len(err.value.problems) == 4
    message = str(err.value)
    assert "bad.jsonl" in message and "line 7" in message and "Nothing from this file was stored" in message
    assert _counts(db) == (0, 0, 0)


def test_many_problems_are_all_reported(sqlite_db: Database, tmp_path: Path) -> None:
    f = tmp_path / "junk.jsonl"
    f.write_text("".join("not json\n" for _ in range(30)))
    with pytest.raises(ValidationFailed) as err:
        import_jsonl(sqlite_db, f)
    assert len(err.value.problems) == 30 and "(and 10 more)" in str(err.value)
    report = failure_report(err.value)
    assert all(f"line {n}: invalid JSON" in report for n in range(1, 31))


def test_database_failure_on_last_line_rolls_back_earlier_chunks(db: Database, tmp_path: Path) -> None:
    records = [_line(i, scores={"ok": 1.0}) for i in range(23)]
    records[-1]["scores"] = {"poison": 0.0}
    f = _write(tmp_path / "big.jsonl", records)
    assert validate_jsonl(f) == 23  # valid as input: only the database refuses it
    with poisoned_scores(db), pytest.raises(Exception, match="poisoned score"):
        import_jsonl(db, f, chunk_size=5)  # 4 chunks inserted before the failing one
    assert _counts(db) == (0, 0, 0)
    records[-1]["scores"] = {"ok": 0.0}
    _write(f, records)
    assert import_jsonl(db, f, chunk_size=5).inserted == 23
    assert _counts(db) == (23, 23, 0)


def test_blank_lines_bom_and_non_utf8(sqlite_db: Database, tmp_path: Path) -> None:
    f = tmp_path / "bom.jsonl"
    f.write_bytes(
        b"\xef\xbb\xbf" + json.dumps(_line(0)).encode() + b"\n\n   \n" + json.dumps(_line(1)).encode()
    )
    r = import_jsonl(sqlite_db, f)
    assert (r.records, r.inserted) == (2, 2)
    g = tmp_path / "latin1.jsonl"
    g.write_bytes(json.dumps(_line(2)).encode() + b'\n{"messages": "caf\xe9"}\n')
    with pytest.raises(ValidationFailed) as err:
        import_jsonl(sqlite_db, g)
    assert err.value.problems[0][0] == "line 2" and "UTF-8" in err.value.problems[0][1]
    assert _counts(sqlite_db)[0] == 2


def test_paths_missing_unreadable_and_folders(sqlite_db: Database, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        jsonl_files(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotFound, match="no \\*.jsonl"):
        jsonl_files(empty)
    folder = tmp_path / "many"
    folder.mkdir()
    _write(folder / "b.jsonl", [_line(1)])
    _write(folder / "a.jsonl", [_line(0)])
    (folder / "notes.txt").write_text("ignored")
    (folder / "c.jsonl.tmp").write_text("half written")
    assert [p.name for p in jsonl_files(folder)] == ["a.jsonl", "b.jsonl"]
    with pytest.raises(ValidationFailed, match="is a folder"):
        import_jsonl(sqlite_db, folder)
    with pytest.raises(NotFound, match="does not exist"):
        import_jsonl(sqlite_db, tmp_path / "vanished.jsonl")


def test_unreadable_file(sqlite_db: Database, tmp_path: Path) -> None:
    locked = _write(tmp_path / "locked.jsonl", [_line(0)])
    locked.chmod(0)
    try:
        try:
            locked.open("rb").close()
            pytest.skip("file permissions are not enforced for this user (root)")
        except PermissionError:
            pass
        with pytest.raises(ValidationFailed, match="Cannot read"):
            import_jsonl(sqlite_db, locked)
    finally:
        locked.chmod(0o644)


def test_large_file_imports_in_bounded_memory(sqlite_db: Database, tmp_path: Path) -> None:
    import tracemalloc

    def write(path: Path, n: int) -> Path:
        with path.open("w") as fh:
            for i in range(n):
                fh.write(json.dumps({"messages": chat(f"{path.stem} {i} " + "x" * 300, "a" * 300)}) + "\n")
        return path

    import_jsonl(
        sqlite_db, write(tmp_path / "warm.jsonl", 200), chunk_size=100
    )  # caches filled outside the measure
    big = write(tmp_path / "big.jsonl", 4000)
    tracemalloc.start()
    try:
        result = import_jsonl(sqlite_db, big, chunk_size=100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.inserted == 4000
    # Holding the file's records at once would need several times its size; chunks need a fraction.
    assert peak < big.stat().st_size / 2, (peak, big.stat().st_size)
