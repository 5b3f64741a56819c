"""Issue 20.4: secrets masked everywhere. A recognisable secret goes into every secret-bearing
setting (the list comes from the settings model's types, so a secret setting added later fails
here until it is given one), then every output surface is searched for it: `learnloop config`
(text and --json), `learnloop status` (text and --json), `learnloop alerts test`, every page and
read route the app serves (API, dashboard, /readyz, /metrics, the OpenAPI document), the events
the dashboard shows, the daemon's log files, the process's log lines, and the error messages of a
bad or unreachable database.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy import text

from api_support import free_port
from learnloop.api import create_app
from learnloop.api.methods import app_routes
from learnloop.config import Settings, load_settings
from learnloop.errors import ConfigError, StoreUnavailable
from learnloop.masking import SECRET_ENV, redact, redact_logs, remember, secret_fields
from learnloop.store.db import Database
from learnloop.store.events import recent_events

HOOK_PATH = "services/T0/B0/hookpathSECRET7"
SECRETS = {
    "api_token": "tokSECRET1",
    "server.read_token": "readSECRET2",
    "scoring.judge_api_key": "judgeSECRET3",
    "serving.api_key": "serveSECRET4",
    "database_url": "dbpassSECRET5",  # the password inside the URL
    "alerts[].headers": "Bearer hdrSECRET6",
    "alerts[].url": HOOK_PATH,  # the path of the webhook URL (Slack's key is its path)
}
# Each secret, and the parts of it a careless message might quote.
NEEDLES = [*SECRETS.values(), "hdrSECRET6", "hookpathSECRET7"]


def test_every_secret_setting_of_the_model_is_covered_here() -> None:
    assert set(secret_fields(Settings)) == set(SECRETS)


@pytest.fixture
def secret_env(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The environment and learnloop.toml of a deployment holding every secret."""
    for key in [k for k in os.environ if k.startswith("LEARNLOOP_")]:
        monkeypatch.delenv(key)
    # PostgreSQL here trusts local connections: any password is accepted, so the URL can carry one.
    db_url = pg_url.replace("postgres@", f"postgres:{SECRETS['database_url']}@", 1)
    assert SECRETS["database_url"] in db_url
    dead_hook = f"http://127.0.0.1:{free_port()}/{HOOK_PATH}"
    config = tmp_path / "learnloop.toml"
    config.write_text(
        f"""
[scoring]
judge_api_key = "{SECRETS["scoring.judge_api_key"]}"
[serving]
api_key = "{SECRETS["serving.api_key"]}"
[watch]
alert_timeout_s = 2
alert_backoff_s = 0
[[alerts]]
name = "pager"
when = "job_failed"
url = "{dead_hook}"
headers = {{Authorization = "{SECRETS["alerts[].headers"]}"}}
"""
    )
    env = {
        "LEARNLOOP_CONFIG": str(config),
        "LEARNLOOP_DATA_DIR": str(tmp_path / "data"),
        "LEARNLOOP_DATABASE_URL": db_url,
        "LEARNLOOP_API_TOKEN": SECRETS["api_token"],
        "LEARNLOOP_SERVER__READ_TOKEN": SECRETS["server.read_token"],
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield env


def _clean(surface: str, text: str) -> None:
    for needle in NEEDLES:
        assert needle not in text, f"{needle!r} shown by {surface}: ...{_around(text, needle)}..."


def _around(text: str, needle: str) -> str:
    i = text.index(needle)
    return text[max(0, i - 80) : i + 80]


def test_no_surface_shows_a_secret(secret_env: dict[str, str], tmp_path: Path) -> None:
    from learnloop.cli.main import cli
    from learnloop.daemon.log import configure_log, emit

    settings = load_settings()
    assert settings.api_token and settings.api_token.get_secret_value() == SECRETS["api_token"]
    runner = CliRunner()

    for args in (["db", "upgrade"], ["config"], ["config", "--json"], ["status"], ["status", "--json"]):
        r = runner.invoke(cli, args)
        assert r.exit_code == 0, (args, r.output)
        _clean(f"learnloop {' '.join(args)}", r.output)
    r = runner.invoke(cli, ["config"])
    assert "https://hooks" not in r.output and "http://127.0.0.1" in r.output and "/***" in r.output

    # A webhook that cannot be reached: its error goes to the CLI, the events and the dashboard.
    r = runner.invoke(cli, ["alerts", "test"])
    assert r.exit_code == 1 and "FAILED" in r.output, r.output
    _clean("learnloop alerts test", r.output)
    db = Database(settings.resolved_database_url)
    events = recent_events(db, limit=50)
    assert any(e.kind == "alert.failed" for e in events)
    _clean("events", " ".join(f"{e.message} {e.data}" for e in events))

    # The daemon's log files, and log lines of the process, even where a message quotes a secret.
    configure_log(tmp_path / "logs")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        redact_logs()
        leak = f"posting to {settings.alerts[0].url.get_secret_value()} as {SECRETS['alerts[].headers']}"
        emit(db, "test.careless", leak, level="error")
        logging.getLogger("learnloop.test").error("careless: %s %s", leak, SECRETS["database_url"])
        try:
            raise RuntimeError(f"judge said no to {SECRETS['scoring.judge_api_key']}")
        except RuntimeError:
            logging.getLogger("learnloop.test").exception("judge failed")
    finally:
        root.removeHandler(handler)
        configure_log(None)
    logged = stream.getvalue()
    assert "careless" in logged and "judge failed" in logged and "RuntimeError" in logged
    _clean("log lines", logged)
    files = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert "test.careless" in files
    _clean("log files", files)

    # Every GET the app serves that takes no path parameter: API, dashboard, health, metrics, docs.
    read = {"Authorization": f"Bearer {SECRETS['server.read_token']}"}
    with TestClient(create_app(settings, db, watch_inbox=False), raise_server_exceptions=False) as client:
        pages = sorted(
            {r.path for r in app_routes(client.app) if "GET" in (r.methods or ()) and "{" not in r.path}
        )
        assert {"/", "/v1/status", "/readyz", "/metrics", "/openapi.json"} <= set(pages)
        for path in pages:
            if "stream" in path or path.endswith("/events"):
                continue  # server-sent events never end; their frames are the fragments checked here
            r = client.get(path, headers=read)
            assert r.status_code < 500, (path, r.status_code)
            _clean(f"GET {path}", r.text)
        # Refusals do not echo what was expected.
        for r in (
            client.post("/v1/ingest", json={}, headers={"Authorization": "Bearer wrong"}),
            client.post("/v1/chat/completions", json={}, headers={"Authorization": "Bearer wrong"}),
            client.get("/v1/status", headers={"Authorization": "Bearer wrong"}),
        ):
            assert r.status_code == 401
            _clean("a 401", r.text)
    db.dispose()


def test_database_errors_name_no_password(secret_env: dict[str, str]) -> None:
    password = SECRETS["database_url"]
    with pytest.raises(ConfigError) as bad:
        Database(f"postgresql+psycopg://postgres:{password}@127.0.0.1:notaport/test")
    _clean("a bad database URL", str(bad.value))
    down = Database(
        f"postgresql+psycopg://postgres:{password}@127.0.0.1:{free_port()}/test",
        connect_args={"connect_timeout": 2},
    )
    with pytest.raises(StoreUnavailable) as unreachable, down.session() as session:
        session.execute(text("select 1"))
    assert "Cannot reach the database" in str(unreachable.value)
    _clean("an unreachable database", str(unreachable.value))
    from learnloop.cli.main import cli

    r = CliRunner().invoke(cli, ["status", "--json"], env={"LEARNLOOP_DATABASE_URL": down.url})
    assert r.exit_code == 1 and '"reachable": false' in r.output, r.output
    _clean("learnloop status, database down", r.output)


def test_a_setting_naming_a_secret_env_var_gets_its_value_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The marker for settings such as an upstream's ``api_key_env``: the name is shown, the value
    of the variable it names is scrubbed like any other secret."""

    class Upstream(BaseModel):
        name: str
        api_key_env: Annotated[str, SECRET_ENV]

    monkeypatch.setenv("UPSTREAM_KEY_FOR_TEST", "sk-upstreamSECRET8")
    upstream = Upstream(name="openai", api_key_env="UPSTREAM_KEY_FOR_TEST")
    assert secret_fields(Upstream) == ["api_key_env"]
    assert upstream.model_dump(mode="json")["api_key_env"] == "UPSTREAM_KEY_FOR_TEST"
    remember(upstream)
    assert redact("401 for key sk-upstreamSECRET8") == "401 for key ***"


def test_masked_forms_still_say_which_endpoint() -> None:
    s = Settings(
        database_url="postgresql+psycopg://app:pw-longer-than-six@db.internal:5432/prod",
        alerts=[{"name": "a", "when": "rollback", "url": "https://hooks.slack.com/services/X/Y/Z"}],
    )
    shown: dict[str, Any] = s.public_dict()
    assert shown["database_url"] == "postgresql+psycopg://app:***@db.internal:5432/prod"
    assert shown["alerts"][0]["url"] == "https://hooks.slack.com/***"
    assert "pw-longer" not in repr(s) and "services/X" not in repr(s)
    assert re.fullmatch(r"\*+", shown["alerts"][0]["headers"].get("x", "***"))
