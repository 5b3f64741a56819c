"""`learnloop jobs|loops|daemon` and the same routes over real HTTP (writes need the token)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from click.testing import CliRunner
from daemon_support import add, traces

from api_support import live_server
from learnloop.api import create_app
from learnloop.cli.main import cli
from learnloop.config import Settings
from learnloop.daemon import queue
from learnloop.store.db import Database


def test_api_routes(db: Database, settings: Settings, tiny_model_dir: Path) -> None:
    s = Settings.model_validate(
        {
            **settings.model_dump(),
            "api_token": "sekret",
            "loops": [{"name": "qa", "scenario": "qa", "base_model": str(tiny_model_dir)}],
        }
    )
    auth = {"Authorization": "Bearer sekret"}
    add(db, traces("a", 3))
    with live_server(create_app(s, db, watch_inbox=False)) as url, httpx.Client(base_url=url) as http:
        assert http.post("/v1/jobs", json={"kind": "score"}).status_code == 401
        r = http.post(
            "/v1/jobs", json={"kind": "score", "priority": "high", "idempotency_key": "k1"}, headers=auth
        )
        assert r.status_code == 201 and r.json()["created"] and r.json()["priority"] == "high"
        again = http.post("/v1/jobs", json={"kind": "score", "idempotency_key": "k1"}, headers=auth).json()
        assert again["id"] == r.json()["id"] and not again["created"]
        bad = http.post("/v1/jobs", json={"kind": "train", "config": {"algorithm": "sft"}}, headers=auth)
        assert bad.status_code == 422 and "config.base_model" in bad.json()["error"]  # the schema says so
        assert http.post("/v1/jobs", json={"kind": "train"}, headers=auth).status_code == 422
        job_id = r.json()["id"]
        assert http.post(f"/v1/jobs/{job_id}/pause", headers=auth).json()["state"] == "paused"
        assert http.post(f"/v1/jobs/{job_id}/explode", headers=auth).status_code == 422
        assert http.post(f"/v1/jobs/{job_id}/retry", headers=auth).status_code == 409
        assert http.post("/v1/jobs/999/cancel", headers=auth).status_code == 404
        assert [j["id"] for j in http.get("/v1/jobs", params={"state": "paused"}).json()] == [job_id]
        assert http.get(f"/v1/jobs/{job_id}").json()["payload"] == {}
        run = http.post("/v1/loops/qa/run", headers=auth)
        assert run.status_code == 201 and run.json()["loop"] == "qa"
        assert http.post("/v1/loops/qa/run", headers=auth).status_code == 409  # one cycle at a time
        assert http.post("/v1/loops/nope/run", headers=auth).status_code == 404
        assert http.get("/v1/loops").json()[0]["job"]["id"] == run.json()["id"]
        assert http.post("/v1/daemon/freeze", headers=auth).json()["frozen"] is True
        assert http.get("/v1/daemon").json() == {"paused": False, "frozen": True}


def test_cli_commands(db: Database, settings: Settings, tiny_model_dir: Path, tmp_path: Path) -> None:
    toml = tmp_path / "learnloop.toml"
    toml.write_text(
        f'[[loops]]\nname = "qa"\nscenario = "qa"\nsources = ["teacher"]\nbase_model = "{tiny_model_dir}"\n'
        "[loops.triggers]\nmin_new_examples = 100\n"
    )
    env = {
        "LEARNLOOP_DATA_DIR": str(tmp_path / "data"),
        "LEARNLOOP_DATABASE_URL": db.url,
        "LEARNLOOP_CONFIG": str(toml),
    }
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    add(db, traces("a", 62))
    status = json.loads(run("loops", "status", "--check", "--json"))[0]
    assert (
        status["name"] == "qa"
        and "62/100 new teacher traces (scenario qa)" in status["reasons"]
        and status["would_fire"] is False
    )
    job = json.loads(run("jobs", "submit", "--score", "--priority", "low", "--json"))
    assert job["kind"] == "score" and job["priority"] == "low"
    listed = json.loads(run("jobs", "list", "--json"))
    assert [j["id"] for j in listed] == [job["id"]] and "payload" not in listed[0]
    assert "cancel done; now cancelled" in run("jobs", "cancel", str(job["id"]))
    assert "queued as job" in run("loops", "run", "qa")
    assert "frozen: no automatic promotion" in run("daemon", "freeze")
    assert "(it already was)" in run("daemon", "freeze")
    assert json.loads(run("daemon", "status", "--json"))["frozen"] is True
    missing = runner.invoke(cli, ["jobs", "show", "999"], env=env)
    assert (
        missing.exit_code == 1
        and missing.output.strip() == "Error: No job with id 999. `learnloop jobs list` shows the jobs."
    )
    busy = runner.invoke(cli, ["loops", "run", "qa"], env=env)
    assert busy.exit_code == 1 and "already has job" in busy.output and "Traceback" not in busy.output
    logs = list((tmp_path / "data" / "logs").glob("learnloop-*.log"))
    assert logs and "daemon.frozen" in logs[0].read_text()
    assert queue.get_control(db, "daemon.frozen")


def test_daemon_refuses_to_start_on_a_changed_locked_key(
    db: Database, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from learnloop.store.models import LoopState

    toml = tmp_path / "learnloop.toml"
    toml.write_text(
        f'[[loops]]\nname = "qa"\nbase_model = "{tiny_model_dir}"\ntrain = {{ lora = {{ r = 8 }} }}\n'
    )
    with db.session() as s:
        s.add(LoopState(name="qa", locked={"lora.r": 16, "base_model": str(tiny_model_dir)}))
    env = {
        "LEARNLOOP_DATA_DIR": str(tmp_path / "data"),
        "LEARNLOOP_DATABASE_URL": db.url,
        "LEARNLOOP_CONFIG": str(toml),
    }
    result = CliRunner().invoke(cli, ["daemon", "--no-scoring"], env=env)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Loop 'qa': lora.r is locked to 16" in result.output and "configured now: 8" in result.output
