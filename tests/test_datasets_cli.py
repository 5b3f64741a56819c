"""`learnloop datasets build|list|show|export` through the real command, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import learnloop
from helpers import chat
from learnloop.cli.main import cli
from learnloop.config import Settings
from learnloop.store import Database, ingest, parse_batch

REPO = Path(learnloop.__file__).resolve().parents[1]


@pytest.fixture
def env(db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"LEARNLOOP_DATABASE_URL": db.url, "LEARNLOOP_DATA_DIR": str(settings.data_dir)}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def _seed(db: Database) -> None:
    trajectories = [
        {"id": "p1", "messages": chat("name a planet", "mars"), "scores": {"q": 0.9}, "scenario": "space"},
        {
            "id": "p2",
            "messages": chat("name a planet", "the moon"),
            "scores": {"q": 0.1},
            "scenario": "space",
        },
        {"id": "p3", "messages": chat("name a star", "the sun"), "scores": {"q": 0.8}, "scenario": "space"},
        {"id": "p4", "messages": chat("name a dog", "rex"), "scores": {"q": 0.95}, "scenario": "pets"},
    ]
    with db.session() as s:
        ingest(s, parse_batch({"trajectories": trajectories}), holdout_fraction=0.0)


def test_build_list_show_export(db: Database, env: dict[str, str], tmp_path: Path) -> None:
    _seed(db)
    runner = CliRunner()
    out = tmp_path / "sft.jsonl"
    r = runner.invoke(
        cli, ["datasets", "build", "sft", "--scenario", "space", "--min-reward", "0.5", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert "2 examples recorded as dataset 1" in r.output and "p95" in r.output
    assert [json.loads(line)["messages"][-1]["content"] for line in out.read_text().splitlines()] == [
        "mars",
        "the sun",
    ]

    r = runner.invoke(
        cli, ["datasets", "build", "sft", "--scenario", "space", "--min-reward", "0.5", "--json"]
    )
    assert r.exit_code == 0 and json.loads(r.output)["reused"] is True and json.loads(r.output)["id"] == 1

    r = runner.invoke(cli, ["datasets", "build", "dpo", "--min-margin", "0.5", "--json"])
    dpo = json.loads(r.output)
    assert r.exit_code == 0 and dpo["kind"] == "dpo" and dpo["count"] == 1

    r = runner.invoke(cli, ["datasets", "list", "--json"])
    assert [(d["id"], d["kind"], d["count"]) for d in json.loads(r.output)] == [(2, "dpo", 1), (1, "sft", 2)]
    r = runner.invoke(cli, ["datasets", "list"])
    assert r.exit_code == 0 and "sft" in r.output and "dpo" in r.output

    r = runner.invoke(cli, ["datasets", "show", "1"])
    assert r.exit_code == 0 and "suggested max_length" in r.output and "scenario=space" in r.output
    r = runner.invoke(cli, ["datasets", "show", "1", "--json"])
    assert json.loads(r.output)["stats"]["length"]["count"] == 2

    dest = tmp_path / "exported" / "dpo.jsonl"
    r = runner.invoke(cli, ["datasets", "export", "2", str(dest)])
    assert r.exit_code == 0 and json.loads(dest.read_text())["chosen"][0]["content"] == "mars"

    r = runner.invoke(cli, ["datasets", "show", "99"])
    assert r.exit_code == 1 and "No dataset with id 99" in r.output
    r = runner.invoke(cli, ["datasets", "build", "grpo", "--scenario", "nothing"])
    assert r.exit_code == 1 and "No grpo examples passed the filters" in r.output
    r = runner.invoke(cli, ["datasets", "build", "sft", "--tokenizer", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "does not exist" in r.output


def test_real_entry_point(db: Database, env: dict[str, str]) -> None:
    _seed(db)
    proc = subprocess.run(
        [sys.executable, "-m", "learnloop", "datasets", "build", "holdout"],
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Everything was ingested into train: the holdout builder finds nothing and says so.
    assert proc.returncode == 1 and "No holdout examples" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "learnloop", "datasets", "build", "sft", "--json"],
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["count"] == 4
