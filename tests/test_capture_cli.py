"""`learnloop capture status|deliver` as subprocesses on a real spool and database."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from api_support import LEARNLOOP, cli_env, free_port
from capture_support import counts, stored_ids
from learnloop.capture.spool import Spool
from learnloop.capture.writer import dumps
from learnloop.store import Database


def _dead_writer_batches(spool_dir: Path, n_batches: int, per_batch: int) -> list[str]:
    dead = Spool(spool_dir)
    ids = []
    for b in range(n_batches):
        recs = [
            {"id": f"cli-{b}-{i}", "messages": [{"role": "user", "content": f"{b}/{i}"}]}
            for i in range(per_batch)
        ]
        ids += [r["id"] for r in recs]
        dead.write(dumps({"trajectories": recs}))
    os.close(dead._lock_fd)  # its process is gone
    return ids


def test_status_then_deliver(db: Database, tmp_path: Path) -> None:
    data = tmp_path / "data"
    ids = _dead_writer_batches(data / "spool", 3, 4)
    env = cli_env(data, LEARNLOOP_DATABASE_URL=db.url)

    out = subprocess.run(
        [*LEARNLOOP, "capture", "status", "--json"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert (status["batches"], status["records"]) == (3, 12)
    assert status["writers"][0]["alive"] is False

    out = subprocess.run(
        [*LEARNLOOP, "capture", "deliver"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "delivered 12 record(s) via database" in out.stdout
    assert stored_ids(db) == set(ids) and counts(db)["trajectories"] == 12

    out = subprocess.run(
        [*LEARNLOOP, "capture", "status"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert "waiting: 0 record(s) in 0 batch(es)" in out.stdout


def test_deliver_to_an_unreachable_server_fails_clearly_and_keeps_the_spool(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _dead_writer_batches(data / "spool", 1, 2)
    env = cli_env(data, LEARNLOOP_CAPTURE__SERVER_URL=f"http://127.0.0.1:{free_port()}")
    out = subprocess.run(
        [*LEARNLOOP, "capture", "deliver", "--timeout", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "Could not deliver everything within 1s" in out.stderr and "cannot reach" in out.stderr
    status = subprocess.run(
        [*LEARNLOOP, "capture", "status", "--json"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert json.loads(status.stdout)["records"] == 2
