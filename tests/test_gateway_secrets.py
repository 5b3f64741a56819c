"""An upstream's API key reaches the upstream and nothing else: not config, status, the dashboard,
errors, metrics, logs, events, the alias log or stored trajectories, even from an upstream that
quotes the key back in its error."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from api_support import LEARNLOOP, cli_env
from learnloop.config import Settings
from learnloop.demo.task import cases
from learnloop.registry import move
from learnloop.store.db import Database
from learnloop.store.models import AliasEvent, Event, Trajectory
from upstream_support import KEY, KEY_ENV, gateway, gateway_settings, teacher_server, wait_for

# Every GET page of the dashboard that takes no id.
PAGES = ["/", "/jobs", "/versions", "/serving", "/quality", "/rewards", "/datasets", "/trajectories"]


def test_the_upstream_key_never_leaks(
    settings: Settings,
    db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with teacher_server() as up:
        s = gateway_settings(settings, up.url)
        move(db, s, "learnloop", "set", "upstream:teacher", actor="test")
        with gateway(s, db) as (url, runtime):
            wait_for(lambda: "learnloop" in runtime.aliases, "the alias to be read")
            body = {"model": "learnloop", "messages": cases(800, 1)[0].messages}
            ok = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
            assert ok.status_code == 200
            assert up.requests[-1]["authorization"] == f"Bearer {KEY}"  # it did go upstream
            for stream in (False, True):
                up.faults["kind"] = "echo_key"  # the upstream quotes the key in its error
                r = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": stream}, timeout=60)
                assert r.status_code == 400 and "Bearer ***" in r.json()["error"]["message"]
                seen.append(r.text)
            up.faults.clear()
            runtime.capture.flush(30)
            runtime.flush_traffic()
            for path in [
                "/v1/status",
                "/metrics",
                "/v1/models",
                "/v1/aliases",
                "/v1/aliases/history",
                *PAGES,
            ]:
                r = httpx.get(f"{url}{path}", timeout=60)
                assert r.status_code == 200, (path, r.status_code)
                seen.append(r.text)
            status = httpx.get(f"{url}/v1/status", timeout=60).json()
            assert any(t["target"] == "upstream:teacher" for a in status["traffic"] for t in a["targets"])
    seen.append(json.dumps(s.public_dict()))
    assert s.public_dict()["upstreams"][0]["api_key_env"] == KEY_ENV  # the variable's name is shown
    seen += [r.getMessage() for r in caplog.records]
    seen += [str(r.exc_info) for r in caplog.records if r.exc_info]
    with db.read_session() as session:
        seen += [json.dumps([e.message, e.data]) for e in session.scalars(select(Event))]
        seen += [f"{a.reason} {a.to_version}" for a in session.scalars(select(AliasEvent))]
        seen += [json.dumps([t.messages, t.meta]) for t in session.scalars(select(Trajectory))]
    # The CLI's views, with the key in the environment as a server would have it.
    config = tmp_path / "learnloop.toml"
    config.write_text(
        f'database_url = "{db.url}"\n\n[[upstreams]]\nname = "teacher"\nbase_url = "{up.url}/v1"\n'
        f'model = "rules-teacher"\napi_key_env = "{KEY_ENV}"\n'
    )
    env = cli_env(tmp_path / "data", LEARNLOOP_CONFIG=str(config), **{KEY_ENV: KEY})
    for args in (["config"], ["config", "--json"], ["status", "--json"], ["alias", "list"]):
        out = subprocess.run([*LEARNLOOP, *args], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (args, out.stderr)
        seen += [out.stdout, out.stderr]
    leaks = [text for text in seen if KEY in text]
    assert leaks == [], leaks[0][:500]
    assert len(seen) > 20
