"""`learnloop serve` fails before any effect on a busy port or a data dir another server serves, and
every command says which config file and data dir it used (and when it fell back to ~/.learnloop)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from api_support import LEARNLOOP, cli_env, free_port
from learnloop.cli.preflight import claim_data_dir, release
from learnloop.errors import ConfigError

BANNER = "learnloop "  # the start line names the version and URL: printed only once the checks passed


def _serve(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LEARNLOOP, "serve", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_serve_on_a_busy_port_says_so_before_migrating_or_loading(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _serve(cli_env(data), tmp_path, "--port", str(port))
    assert out.returncode == 1
    assert f"Port {port} on 127.0.0.1 is already in use" in out.stderr and "Traceback" not in out.stderr
    assert f"--port {port + 1}" in out.stderr and "Nothing was started" in out.stderr
    assert "OpenAI routes" not in out.stderr and f"on http://127.0.0.1:{port}" not in out.stderr
    assert not (data / "learnloop.db").exists()  # no migration ran, so no daemon or model either


def test_a_second_server_on_the_same_data_dir_says_which_one_serves_it(tmp_path: Path) -> None:
    data, first_port, second_port = tmp_path / "data", free_port(), free_port()
    env = cli_env(data)
    log = (tmp_path / "first.log").open("wb")
    first = subprocess.Popen(
        [*LEARNLOOP, "serve", "--port", str(first_port), "--no-openai"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{first_port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the first server did not come up"
            time.sleep(0.3)
        second = _serve(env, tmp_path, "--port", str(second_port))
        assert second.returncode == 1, second.stderr
        assert f"The data dir {data} is already served by another `learnloop serve`" in second.stderr
        assert f"pid {first.pid}, http://127.0.0.1:{first_port}" in second.stderr
        assert "OpenAI routes" not in second.stderr and f":{second_port} (" not in second.stderr
        with pytest.raises(ConfigError, match=f"pid {first.pid}"):
            claim_data_dir(data, "http://in-process")
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(60)
    lock = claim_data_dir(data, "http://in-process")  # the first server's lock went with it
    assert json.loads((data / "server.lock").read_text())["pid"] == os.getpid()
    release(lock)


def _run(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LEARNLOOP, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_config_names_the_files_and_the_data_dir_it_used(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "learnloop.toml").write_text(f'data_dir = "{tmp_path / "from-file"}"\n')
    env = {k: v for k, v in cli_env(tmp_path / "unused").items() if k != "LEARNLOOP_DATA_DIR"}
    out = _run(project, "config", env=env)
    assert out.returncode == 0, out.stderr
    head = out.stdout.splitlines()[:3]
    assert head == [
        f"# config file: {project / 'learnloop.toml'}",
        "# environment: no LEARNLOOP_* variables",
        f"# data dir: {tmp_path / 'from-file'} (from {project / 'learnloop.toml'})",
    ]
    other = tmp_path / "other.toml"
    other.write_text("[server]\nport = 9100\n")
    out = _run(
        project, "config", "--json", env={**env, "LEARNLOOP_CONFIG": str(other), "LEARNLOOP_DATA_DIR": "/x"}
    )
    assert json.loads(out.stdout)["server"]["port"] == 9100  # stdout stays JSON; the header goes to stderr
    assert (
        f"# config file: {other} (named by LEARNLOOP_CONFIG); {project / 'learnloop.toml'} is not read"
        in (out.stderr)
    )
    assert "# environment: LEARNLOOP_CONFIG, LEARNLOOP_DATA_DIR" in out.stderr
    assert "# data dir: /x (from LEARNLOOP_DATA_DIR)" in out.stderr


def test_a_command_without_a_config_says_once_that_it_uses_the_defaults(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in cli_env(tmp_path / "unused").items() if k != "LEARNLOOP_DATA_DIR"}
    env["HOME"] = str(home)
    note = f"learnloop: no learnloop.toml in {tmp_path} and LEARNLOOP_CONFIG unset: using the defaults, "
    for args in (("stats",), ("loops", "status"), ("config",)):
        out = _run(tmp_path, *args, env=env)
        assert out.returncode == 0, out.stderr
        said = out.stderr.count("no learnloop.toml in") + out.stdout.count("no learnloop.toml in")
        assert said == 1, (args, out.stderr, out.stdout)
        if args != ("config",):
            assert note + f"data dir {home / '.learnloop'}." in out.stderr
    assert f"# data dir: {home / '.learnloop'} (from the default)" in out.stdout
    # With a config file, or a data dir chosen in the environment, nothing is said.
    quiet = _run(tmp_path, "stats", env={**env, "LEARNLOOP_DATA_DIR": str(tmp_path / "d")})
    assert quiet.returncode == 0 and "no learnloop.toml" not in quiet.stderr
