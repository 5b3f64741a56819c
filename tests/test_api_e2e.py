"""End to end over real HTTP: `learnloop serve` as a subprocess, a batch posted,
a file dropped in the inbox."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from api_support import LEARNLOOP, cli_env, free_port
from helpers import chat
from learnloop.store import Database


def _wait(predicate, what: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(
                f"server exited ({proc.returncode}) while waiting for {what}: {proc.stderr.read()}"
            )
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_serve_ingest_read_back_and_inbox(tmp_path: Path, db: Database) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    env = cli_env(
        data,
        LEARNLOOP_DATABASE_URL=db.url,
        LEARNLOOP_API_TOKEN="tok",
        LEARNLOOP_SERVER__INBOX_POLL_SECONDS="0.2",
    )
    proc = subprocess.Popen(
        [*LEARNLOOP, "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait(lambda: _up(url), "the server to answer /healthz", proc)
        auth = {"Authorization": "Bearer tok"}
        batch = {
            "trajectories": [
                {
                    "id": "e2e-1",
                    "scenario": "demo",
                    "messages": chat("2+2?", "4"),
                    "feedback": {"thumbs": "up"},
                },
                {
                    "id": "e2e-2",
                    "scenario": "demo",
                    "messages": chat("3+3?", "6"),
                    "scores": {"correct": 1.0},
                },
            ]
        }
        assert httpx.post(f"{url}/v1/ingest", json=batch, timeout=10).status_code == 401
        r = httpx.post(f"{url}/v1/ingest", json=batch, headers=auth, timeout=10)
        assert r.status_code == 200 and r.json()["inserted"] == 2 and r.json()["feedback_inserted"] == 1
        got = httpx.get(f"{url}/v1/trajectories/e2e-2", timeout=10).json()
        assert got["messages"] == chat("3+3?", "6") and got["scenario"] == "demo"

        inbox = data / "inbox"
        lines = "".join(
            json.dumps({"messages": chat(f"inbox {i}", "ok"), "scenario": "inbox"}) + "\n" for i in range(3)
        )
        (inbox / "drop.jsonl.tmp").write_text(lines)
        os.replace(inbox / "drop.jsonl.tmp", inbox / "drop.jsonl")
        _wait(lambda: (inbox / "processed" / "drop.jsonl").exists(), "the inbox file to be processed", proc)
        assert not (inbox / "drop.jsonl").exists()
        stats = httpx.get(f"{url}/v1/stats", timeout=10).json()
        assert {"scenario": "inbox", "count": 3} in stats["by_scenario"]
        assert {"scenario": "demo", "count": 2} in stats["by_scenario"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
