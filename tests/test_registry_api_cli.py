"""The registry and evaluation over real HTTP (reads open, writes need the token) and through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from pydantic import SecretStr
from registry_support import add_holdout, make_adapter, make_run_dir, settings_for

from api_support import live_server
from learnloop.api import create_app
from learnloop.cli.main import cli
from learnloop.config import Settings
from learnloop.store import Database
from learnloop.store.models import ModelVersion


def test_http_routes(db: Database, settings: Settings, tiny_model_dir: Path, tmp_path: Path) -> None:
    s = settings_for(settings, tiny_model_dir).model_copy(update={"api_token": SecretStr("sekret")})
    adapter = make_adapter(tiny_model_dir, tmp_path / "a")
    auth = {"Authorization": "Bearer sekret"}
    with live_server(create_app(s, db, watch_inbox=False)) as url:
        r = httpx.post(f"{url}/v1/versions", json={"adapter_dir": str(adapter)})
        assert r.status_code == 401
        r = httpx.post(f"{url}/v1/versions", json={"adapter_dir": str(tmp_path / "missing")}, headers=auth)
        assert r.status_code == 404 and "does not exist" in r.json()["error"]  # a path holding nothing
        r = httpx.post(
            f"{url}/v1/versions", json={"adapter_dir": str(adapter), "note": "via api"}, headers=auth
        )
        assert r.status_code == 201, r.text
        v1 = r.json()["id"]
        r2 = httpx.post(
            f"{url}/v1/versions",
            json={"adapter_dir": str(make_adapter(tiny_model_dir, tmp_path / "b", seed=1))},
            headers=auth,
        )
        v2 = r2.json()["id"]
        assert [v["id"] for v in httpx.get(f"{url}/v1/versions").json()] == [v2, v1]
        assert httpx.get(f"{url}/v1/versions/{v1}").json()["note"] == "via api"
        assert httpx.get(f"{url}/v1/versions/v0404").status_code == 404
        assert httpx.get(f"{url}/v1/versions/{v1}/lineage").json()["adapter"]["sha256"]
        assert httpx.get(f"{url}/v1/versions/diff", params={"a": v1, "b": v2}).json()["fields"][
            "adapter_sha256"
        ]

        r = httpx.post(f"{url}/v1/versions/{v1}/promote", json={"reason": "try"}, headers=auth)
        assert r.status_code == 409 and "no gate verdict" in r.json()["error"]
        r = httpx.post(
            f"{url}/v1/versions/{v1}/promote",
            json={"reason": "try", "force": True, "actor": "ops"},
            headers=auth,
        )
        assert r.status_code == 200 and r.json()["action"] == "force"
        assert (
            httpx.post(f"{url}/v1/versions/{v2}/promote", json={"force": True}, headers=auth).status_code
            == 200
        )
        assert httpx.get(f"{url}/v1/aliases").json()[0]["version"] == v2  # serving's route
        assert httpx.post(f"{url}/v1/aliases/rollback", json={}, headers=auth).json() == {
            "alias": "learnloop",
            "version_id": v1,
        }
        log = httpx.get(f"{url}/v1/aliases/history").json()
        assert [(e["action"], e["to"], e["actor"]) for e in log] == [
            ("rollback", v1, "api-token"),
            ("force", v2, "api-token"),
            ("force", v1, "api-token:ops"),
        ]
        assert httpx.delete(f"{url}/v1/versions/{v1}", headers=auth).status_code == 409
        r = httpx.post(f"{url}/v1/versions/{v2}/restore", json={"loop": "support"}, headers=auth)
        assert r.status_code == 200 and r.json()["loop"] == "support"
        assert httpx.delete(f"{url}/v1/versions/{v2}", headers=auth).status_code == 409  # the loop's head
        assert httpx.get(f"{url}/v1/evaluations").json() == []
        assert httpx.get(f"{url}/v1/evaluations/7").status_code == 404


def test_cli_versions_and_eval(
    db: Database, settings: Settings, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {
        "LEARNLOOP_DATABASE_URL": db.url,
        "LEARNLOOP_DATA_DIR": str(settings.data_dir),
        "LEARNLOOP_TRAINING__BASE_MODEL": str(tiny_model_dir),
        "LEARNLOOP_GATE__MIN_EXAMPLES": "5",
        "LEARNLOOP_EVALUATION__MAX_NEW_TOKENS": "4",
        "LEARNLOOP_EVALUATION__BOOTSTRAP_RESAMPLES": "500",
    }.items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    run = make_run_dir(tiny_model_dir, tmp_path / "run")
    r = runner.invoke(cli, ["versions", "create", "--from", str(run), "--note", "cli"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("registered v0001")
    r = runner.invoke(cli, ["versions", "create", "--from", str(tmp_path)])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "Traceback" not in r.output
    r = runner.invoke(cli, ["versions", "list", "--json"])
    assert [v["id"] for v in json.loads(r.output)] == ["v0001"]
    r = runner.invoke(cli, ["versions", "show", "v0001"])
    assert "adapter:   sha256" in r.output and "note: cli" in r.output

    add_holdout(db, 6)
    r = runner.invoke(
        cli, ["eval", "run", "--candidate", "v0001", "--baseline", "base", "--limit", "6", "--json"]
    )
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    assert ev["metrics"]["overall"]["n"] == 6 and ev["verdict"] in ("promote", "reject")
    r = runner.invoke(cli, ["eval", "show", "v0001"])
    assert r.exit_code == 0 and "paired diff" in r.output and "gate:" in r.output
    r = runner.invoke(cli, ["eval", "compare", str(ev["id"]), "v0001"])
    assert r.exit_code == 0 and "examples that differ most (6 shared)" in r.output

    r = runner.invoke(
        cli,
        ["versions", "promote", "v0001", "--reason", "ship it"]
        + ([] if ev["verdict"] == "promote" else ["--force"]),
    )
    assert r.exit_code == 0 and "learnloop: base -> v0001" in r.output
    r = runner.invoke(cli, ["versions", "history"])
    assert "ship it" in r.output and "local:" in r.output
    r = runner.invoke(cli, ["versions", "rollback"])
    assert r.exit_code == 0 and "now serves the base model" in r.output
    r = runner.invoke(cli, ["versions", "restore", "v0001"])
    assert r.exit_code == 0 and "--init-adapter" in r.output
    r = runner.invoke(cli, ["versions", "delete", "v0001"])
    assert r.exit_code == 1 and "restored head" in r.output
    r = runner.invoke(cli, ["versions", "delete", "v0001", "--force"])
    assert r.exit_code == 0
    with db.read_session() as session:
        assert session.get(ModelVersion, "v0001") is None


def test_http_evaluation_and_export(
    db: Database, settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    if db.dialect != "sqlite":
        pytest.skip("the routes are thin; the HTTP test above covers PostgreSQL")
    s = settings_for(
        settings,
        tiny_model_dir,
        gate={"min_examples": 3},
        evaluation={"max_new_tokens": 4, "bootstrap_resamples": 500},
    )
    add_holdout(db, 4)
    from learnloop.registry import register_version

    v1 = register_version(db, s, adapter_dir=make_adapter(tiny_model_dir, tmp_path / "a"))
    with live_server(create_app(s, db, watch_inbox=False)) as url:
        r = httpx.post(
            f"{url}/v1/evaluations", json={"candidate": v1, "baseline": "base", "limit": 3}, timeout=300
        )
        assert r.status_code == 201, r.text
        ev = r.json()
        assert ev["metrics"]["overall"]["n"] == 3 and "examples" not in ev
        assert (
            httpx.get(f"{url}/v1/evaluations/{ev['id']}").json()["examples"][0]["candidate"]["text"]
            is not None
        )
        assert (
            httpx.get(f"{url}/v1/evaluations/compare", params={"a": ev["id"], "b": v1}).json()[
                "shared_examples"
            ]
            == 3
        )
        r = httpx.post(f"{url}/v1/evaluations", json={"candidate": "v0404"}, timeout=60)
        assert r.status_code == 404
        r = httpx.post(f"{url}/v1/versions/{v1}/export", json={"format": "tar"})
        assert r.status_code == 422 and "format" in r.text
        r = httpx.post(
            f"{url}/v1/versions/{v1}/export",
            json={"format": "gguf", "quant": "f16", "out": "g"},
            timeout=300,
        )
        assert r.status_code == 200 and r.json()["files"] == [f"{v1}-f16.gguf"]
        assert r.json()["path"] == str(s.data_dir / "exports" / "g")  # a name under exports/, not a path
