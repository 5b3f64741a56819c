"""The `learnloop` command run as a real subprocess, the way users run it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from api_support import LEARNLOOP, cli_env, free_port
from helpers import chat
from learnloop.store import Database


def run(
    tmp_path: Path, *args: str, db: Database | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    if db is not None:
        env.setdefault("LEARNLOOP_DATABASE_URL", db.url)
    return subprocess.run(
        [*LEARNLOOP, *args],
        env=cli_env(tmp_path / "data", **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _jsonl(path: Path, n: int, start: int = 0) -> Path:
    path.write_text(
        "".join(
            json.dumps({"messages": chat(f"q{i}", "a"), "scenario": "s"}) + "\n"
            for i in range(start, start + n)
        )
    )
    return path


def test_help_lists_every_command(tmp_path: Path) -> None:
    r = run(tmp_path, "--help")
    assert r.returncode == 0
    for name in ("config", "db", "import", "serve", "stats"):
        assert f"  {name} " in r.stdout


def test_config_prints_effective_settings_with_env_and_toml(tmp_path: Path) -> None:
    (tmp_path / "learnloop.toml").write_text('project = "from-toml"\n[server]\nport = 9001\n')
    r = run(tmp_path, "config", "--json", LEARNLOOP_SERVER__PORT="9002", LEARNLOOP_API_TOKEN="hidden-token")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["project"] == "from-toml" and data["server"]["port"] == 9002  # env beats the file
    assert data["data_dir"] == str(tmp_path / "data")
    assert "hidden-token" not in r.stdout
    text = run(tmp_path, "config")
    assert text.returncode == 0 and "[server]" in text.stdout and "port = 9001" in text.stdout


def test_invalid_config_fails_with_a_clear_message(tmp_path: Path) -> None:
    r = run(tmp_path, "config", LEARNLOOP_SERVER__PORT="not-a-port")
    assert r.returncode != 0
    assert "server.port" in r.stderr and "Invalid configuration" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "learnloop.toml").write_text("[server]\nprot = 1\n")
    r = run(tmp_path, "stats")
    assert r.returncode != 0 and "server.prot" in r.stderr
    (tmp_path / "learnloop.toml").write_text("[server\nport = 1\n")
    r = run(tmp_path, "config")
    assert r.returncode != 0 and "Could not read configuration" in r.stderr and "Traceback" not in r.stderr
    r = run(tmp_path, "config", LEARNLOOP_CONFIG=str(tmp_path / "missing.toml"))
    assert r.returncode != 0 and "missing.toml" in r.stderr and "not a file" in r.stderr


def test_db_upgrade_and_current(tmp_path: Path, db: Database) -> None:
    up = run(tmp_path, "db", "upgrade", db=db)
    assert up.returncode == 0, up.stderr
    cur = run(tmp_path, "db", "current", db=db)
    assert cur.returncode == 0 and cur.stdout.strip() and cur.stdout.strip() in up.stdout


def test_db_upgrade_refuses_an_unsupported_database(tmp_path: Path) -> None:
    bad = run(tmp_path, "db", "upgrade", LEARNLOOP_DATABASE_URL="mysql://nobody@localhost/x")
    assert bad.returncode != 0 and "SQLite or PostgreSQL" in bad.stderr and "Traceback" not in bad.stderr


def test_import_then_stats(tmp_path: Path, db: Database) -> None:
    empty = run(tmp_path, "stats", db=db)
    assert empty.returncode == 0 and "no trajectories stored yet" in empty.stdout
    folder = tmp_path / "drops"
    folder.mkdir()
    _jsonl(folder / "a.jsonl", 3)
    _jsonl(folder / "b.jsonl", 2, start=3)
    first = run(tmp_path, "import", str(folder), db=db)
    assert first.returncode == 0, first.stderr
    assert "a.jsonl: 3 records, 3 inserted, 0 duplicates" in first.stdout
    assert "total: 2 of 2 files imported, 5 inserted" in first.stdout
    again = run(tmp_path, "import", "--json", str(folder / "a.jsonl"), db=db)
    assert again.returncode == 0 and json.loads(again.stdout)["duplicates"] == 3
    stats = run(tmp_path, "stats", "--json", db=db)
    assert json.loads(stats.stdout)["by_scenario"] == [{"scenario": "s", "count": 5}]


def test_import_failures_exit_nonzero_and_store_nothing_from_the_bad_file(
    tmp_path: Path, db: Database
) -> None:
    good = _jsonl(tmp_path / "good.jsonl", 2)
    bad = _jsonl(tmp_path / "bad.jsonl", 5, start=10)
    lines = bad.read_text().splitlines()
    lines[2] = "{oops"
    lines[4] = '{"messages": []}'
    bad.write_text("\n".join(lines) + "\n")
    r = run(tmp_path, "import", str(good), str(bad), db=db)
    assert r.returncode == 1
    assert "line 3: invalid JSON" in r.stderr and "line 5: messages" in r.stderr
    assert "1 of 2 file(s) not imported" in r.stderr and "Traceback" not in r.stderr
    stats = json.loads(run(tmp_path, "stats", "--json", db=db).stdout)
    assert stats["by_source"] == [{"source": "production", "count": 2}]  # the good file only
    missing = run(tmp_path, "import", str(tmp_path / "nope.jsonl"), db=db)
    assert missing.returncode != 0 and "nope.jsonl does not exist" in missing.stderr


def test_serve_refuses_to_start_without_a_database(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test?connect_timeout=3"
    r = run(tmp_path, "serve", "--port", str(free_port()), LEARNLOOP_DATABASE_URL=url)
    assert r.returncode != 0
    assert "Cannot reach the database" in r.stderr and "Traceback" not in r.stderr


def test_serve_reports_a_port_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run(tmp_path, "serve", "--port", str(port), "--no-watch-inbox")
    assert r.returncode != 0 and f"Port {port} on 127.0.0.1 is already in use" in r.stderr
