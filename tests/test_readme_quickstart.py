"""The README's quickstart ("Your own app in the loop"), run as written: its learnloop.toml and reward
module written to a project folder, its commands run there, and its app and feedback snippets run
against the real `learnloop serve` they start. Two things differ from a user's machine, both through
the environment, never by editing what the README says: the teacher is the demo's rule-based
OpenAI-compatible server (its URL in place of api.openai.com), and the base model is the tiny
offline one (no model download, no 540 MB SmolLM2 in a test)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import select

from api_support import LEARNLOOP, cli_env, free_port
from learnloop.store.db import Database
from learnloop.store.models import Feedback, Score, Trajectory
from upstream_support import KEY, teacher_server

README = Path(__file__).resolve().parents[1] / "README.md"


def _quickstart() -> str:
    text = README.read_text()
    return text[text.index("## Your own app in the loop") : text.index("\n## GPU")]


def _fenced(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def _shell(section: str) -> list[str]:
    """The indented command lines of the section, in order."""
    return [
        line[4:] for line in section.splitlines() if line.startswith("    ") and not line.startswith("     ")
    ]


def test_the_quickstart_runs_as_written(tmp_path: Path, tiny_model_dir: Path) -> None:
    section = _quickstart()
    (config,) = _fenced(section, "toml")
    rewards, app, feedback = _fenced(section, "python")
    assert rewards.startswith("# my_rewards.py") and 'reward_modules = ["my_rewards.py"]' in config
    commands = _shell(section)
    assert "learnloop alias set learnloop upstream:teacher" in commands and "learnloop serve" in commands

    project, data, port = tmp_path / "project", tmp_path / "data", free_port()
    project.mkdir()
    with teacher_server(api_key=KEY) as teacher:
        (project / "learnloop.toml").write_text(
            config.replace("https://api.openai.com/v1", f"{teacher.url}/v1")
        )
        (project / "my_rewards.py").write_text(rewards)
        env = cli_env(
            data,
            OPENAI_API_KEY=KEY,  # `export OPENAI_API_KEY=sk-...`: the teacher's key
            LEARNLOOP_SERVING__BASE_MODEL=str(tiny_model_dir),
            LEARNLOOP_TRAINING__BASE_MODEL=str(tiny_model_dir),
            LEARNLOOP_SERVER__PORT=str(port),
        )

        def run(command: str) -> subprocess.CompletedProcess[str]:
            args = command.split()
            assert args[0] == "learnloop"
            out = subprocess.run(
                [*LEARNLOOP, *args[1:]], env=env, cwd=project, capture_output=True, text=True, timeout=300
            )
            assert out.returncode == 0, f"{command}: {out.stderr[-2000:]}"
            return out

        assert "support_answer" in run("learnloop rewards list").stdout
        config_out = run("learnloop config")
        assert config_out.stdout.startswith(f"# config file: {project / 'learnloop.toml'}\n")
        run("learnloop alias set learnloop upstream:teacher")

        log = (tmp_path / "serve.log").open("wb")
        server = subprocess.Popen(
            [*LEARNLOOP, "serve"], env=env, cwd=project, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.3)

            # The app's snippet and the feedback snippet, one after the other, as one script.
            script = (app + "\n" + feedback + "\nprint('REPLY_ID', reply.id)\nlearnloop.flush()\n").replace(
                "127.0.0.1:8377", f"127.0.0.1:{port}"
            )
            out = subprocess.run(
                [sys.executable, "-c", script],
                env=env,
                cwd=project,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert out.returncode == 0, out.stderr[-3000:]
            assert "I can only turn order messages into JSON." in out.stdout  # the teacher answered
            reply_id = out.stdout.split("REPLY_ID")[1].split()[0]

            db = Database(f"sqlite:///{data / 'learnloop.db'}")
            deadline = time.monotonic() + 30
            while True:  # the teacher's answer is captured by the background writer
                with db.read_session() as s:
                    row = s.get(Trajectory, reply_id)
                    fb = s.scalars(select(Feedback).where(Feedback.trajectory_id == reply_id)).all()
                if row is not None and fb:
                    break
                assert time.monotonic() < deadline, "the answer or its feedback was not stored"
                time.sleep(0.3)
            assert row.scenario == "support" and row.source.value == "teacher"
            assert row.model_version == "upstream:teacher" and fb[0].thumbs == 1

            run("learnloop rewards apply")
            with db.read_session() as s:
                score = s.scalars(
                    select(Score).where(Score.trajectory_id == reply_id, Score.name == "support_answer")
                ).one()
            assert score.value == 1.0  # "...order messages..." and no "sorry"

            assert "`learnloop loops status`" in section and "`--check`" in section
            (loop,) = json.loads(run("learnloop loops status --check --json").stdout)
            reasons = " ".join(loop["reasons"])
            assert loop["name"] == "support" and not loop["ready"]
            assert "1/100 new teacher traces (scenario support)" in reasons, loop
            assert "/30 held-out examples" in reasons
            db.dispose()
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(60)
