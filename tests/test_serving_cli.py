"""`learnloop serve` with a model, `learnloop chat`, `learnloop alias`: real subprocesses, real HTTP."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import openai
from serving_support import make_adapter, version_row

from api_support import LEARNLOOP, cli_env, free_port
from learnloop.store import Database


def _start(args: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*LEARNLOOP, "serve", *args, "--log-level", "warning"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_up(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, f"server exited: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    return proc.stderr.read()


def test_serve_chat_and_alias_commands(tmp_path: Path, sqlite_db: Database, tiny_model_dir: Path) -> None:
    adapter = make_adapter(tiny_model_dir, tmp_path / "v0001", seed=1)
    with sqlite_db.session() as s:
        s.add(version_row("v0001", tiny_model_dir, adapter))
        s.add(
            version_row(
                "v0002",
                tiny_model_dir,
                make_adapter(tiny_model_dir, tmp_path / "v0002", seed=2),
                gate="reject",
            )
        )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = cli_env(
        tmp_path / "data",
        LEARNLOOP_DATABASE_URL=sqlite_db.url,
        LEARNLOOP_SERVING__THREADS="1",
        LEARNLOOP_SERVING__ALIAS_POLL_SECONDS="0.1",
    )
    proc = _start(["--port", str(port), "--model", str(tiny_model_dir), "--no-watch-inbox"], env, tmp_path)
    try:
        _wait_up(url, proc)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        assert (
            client.chat.completions.create(
                model="base", messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
            .choices[0]
            .message.content
            is not None
        )
        out = subprocess.run(
            [*LEARNLOOP, "chat", "--url", url, "--model", "base", "-m", "hello", "--max-tokens", "4"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0 and "[base]" in out.stderr, out.stderr
        moved = subprocess.run(
            [*LEARNLOOP, "alias", "set", "learnloop", "v0001", "--reason", "try it"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert moved.returncode == 0 and "learnloop -> v0001" in moved.stdout, moved.stderr
        listed = subprocess.run(
            [*LEARNLOOP, "alias", "list"], env=env, capture_output=True, text=True, timeout=60
        )
        assert "learnloop -> v0001" in listed.stdout
        deadline = time.monotonic() + 60
        while (
            client.chat.completions.create(
                model="learnloop", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            ).model
            != "v0001"
        ):
            assert time.monotonic() < deadline, "the server did not follow `learnloop alias set`"
            time.sleep(0.1)
        bad = subprocess.run(
            [*LEARNLOOP, "alias", "set", "learnloop", "v0404"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 1 and bad.stderr.strip() == (
            "Error: No model version 'v0404'; `learnloop versions list` shows them."
        )
        # The gate holds here as for `versions promote`: a rejected version needs --force, and says so.
        refused = subprocess.run(
            [*LEARNLOOP, "alias", "set", "learnloop", "v0002"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 1 and refused.stderr.strip() == (
            "Error: Not serving v0002: gate said reject: win rate 0.41 < 0.5. "
            "Set it with --force to override the gate."
        )
        forced = subprocess.run(
            [*LEARNLOOP, "alias", "set", "learnloop", "v0002", "--force"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert forced.returncode == 0 and "learnloop -> v0002" in forced.stdout, forced.stderr
    finally:
        assert proc.returncode is None or proc.returncode == 0
        _stop(proc)


def test_serve_without_a_model_says_what_to_do(tmp_path: Path, sqlite_db: Database) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = cli_env(tmp_path / "data", LEARNLOOP_DATABASE_URL=sqlite_db.url)
    proc = _start(["--port", str(port), "--no-watch-inbox"], env, tmp_path)
    try:
        _wait_up(url, proc)
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "base", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 503 and "learnloop models prepare smollm2" in r.json()["error"]["message"]
        chat = subprocess.run(
            [*LEARNLOOP, "chat", "--url", url, "-m", "hi"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert chat.returncode == 1 and "503" in chat.stderr and "Traceback" not in chat.stderr
    finally:
        err = _stop(proc)
    assert "OpenAI routes off: No base model to serve" in err
    down = subprocess.run(
        [*LEARNLOOP, "chat", "--url", "http://127.0.0.1:9", "-m", "hi"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        down.returncode == 1
        and "Is `learnloop serve` running?" in down.stderr
        and "Traceback" not in down.stderr
    )
