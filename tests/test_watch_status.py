"""GET /v1/status, /readyz and /metrics over rows the other stages would write (both databases)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from watch_support import chat, seed_loop, seed_trajectories

from learnloop.api.app import create_app
from learnloop.config import Settings
from learnloop.store.db import Database, downgrade
from learnloop.watch import metrics as metrics_mod
from learnloop.watch.host import process_role


def client(settings: Settings, db: Database) -> TestClient:
    return TestClient(create_app(settings, db, watch_inbox=False))


def test_status_of_an_empty_database_is_empty_not_an_error(settings: Settings, db: Database) -> None:
    body = client(settings, db).get("/v1/status").json()
    assert body["loops"] == [] and body["running"] == [] and body["running_job"] is None
    assert body["serving"] == [] and body["last_evaluation"] is None
    assert body["queue"]["depth"] == 0 and set(body["queue"]["by_state"]) >= {"queued", "running", "failed"}
    assert body["trajectories"]["total"] == 0 and body["trajectories"]["by_source"]["served"] == {
        "total": 0,
        "today": 0,
    }
    assert body["host"]["database"]["reachable"] is True


def test_status_reports_every_field_from_the_rows(settings: Settings, db: Database) -> None:
    seed_trajectories(db)
    ids = seed_loop(db, steps=60)
    body = client(settings, db).get("/v1/status").json()

    (loop,) = body["loops"]
    assert loop["name"] == "main" and loop["state"] == "waiting" and loop["head_version"] == "v0002"
    assert 250 < loop["next_check_in_s"] <= 270 and loop["last_check_at"]
    assert loop["readiness_reasons"] == ["12 new trajectories, 50 needed"]

    q = body["queue"]
    assert q["by_state"]["queued"] == 3 and q["by_state"]["running"] == 1 and q["by_state"]["failed"] == 1
    assert q["depth"] == 3
    assert q["by_priority"] == [
        {"priority": 10, "priority_name": "high", "queued": 1},
        {"priority": 50, "priority_name": "50", "running": 1},
        {"priority": 100, "priority_name": "normal", "queued": 2},
    ]

    job = body["running_job"]
    assert job["id"] == ids["running"] and job["step"] == 60 and job["total_steps"] == 200
    assert job["loss"] == 1.25 and job["tokens_per_s"] == 321.5 and job["eta_s"] == 1400.0

    (alias,) = body["serving"]
    assert alias == {**alias, "alias": "learnloop", "version": "v0002", "candidate": "v0003", "split": 0.1}
    assert (
        body["last_evaluation"]["candidate_id"] == "v0003" and body["last_evaluation"]["verdict"] == "reject"
    )
    assert body["last_evaluation"]["reasons"] == ["win rate 0.41 < 0.5"]

    t = body["trajectories"]
    assert (
        t["total"] == 26
        and t["by_source"]["production"]["total"] == 13
        and t["by_source"]["teacher"]["total"] == 3
    )
    assert t["by_source"]["served"]["total"] == 10
    # Seeded over four days: i % 4 == 0 lands today (4 production rows: t-tool + 3),
    # served i % 3 == 0 (4 rows).
    assert t["by_source"]["production"]["today"] == 4 and t["by_source"]["served"]["today"] == 4

    host = body["host"]
    assert (
        host["database"]["reachable"] and host["database"]["latency_ms"] >= 0 and host["database"]["at_head"]
    )
    assert host["disk"]["free_bytes"] > 0 and host["disk"]["path"] == str(settings.data_dir)
    assert host["memory"]["available_bytes"] > 0 and host["memory"]["used_bytes"] > 0
    me = [p for p in host["processes"] if p["self"]]
    assert len(me) == 1 and me[0]["role"] == "server" and me[0]["rss_bytes"] > 10_000_000
    assert isinstance(host["gpus"], list)


def test_eta_is_extrapolated_when_the_job_reports_none(settings: Settings, db: Database) -> None:
    ids = seed_loop(db, steps=10)
    from learnloop.store.models import Job

    with db.session() as s:
        job = s.get(Job, ids["running"])
        job.progress = {"step": 50, "total_steps": 200}
    job = client(settings, db).get("/v1/status").json()["running_job"]
    # 20 minutes for 50 steps: 150 more take about an hour.
    assert 3500 < job["eta_s"] < 3700


def test_processes_are_found_by_role_with_their_rss(settings: Settings, sqlite_db: Database) -> None:
    assert process_role(["/venv/bin/python", "/venv/bin/learnloop", "serve", "--port", "9"]) == "server"
    assert process_role(["python", "-m", "learnloop", "daemon"]) == "daemon"
    assert process_role(["python", "-m", "learnloop.training.run", "--config", "c.json"]) == "training"
    assert process_role(["python", "-m", "pytest"]) is None
    sleep = "import time; time.sleep(60)"
    procs = [
        subprocess.Popen([sys.executable, "-c", sleep, "learnloop", "daemon"]),
        subprocess.Popen([sys.executable, "-c", sleep, "-m", "learnloop.training.run"]),
    ]
    try:
        # Found at once (their command lines are set at exec); their RSS grows as Python starts up.
        def found() -> dict[int, dict] | None:
            body = client(settings, sqlite_db).get("/v1/status").json()
            by_pid = {p["pid"]: p for p in body["host"]["processes"]}
            ready = all(by_pid.get(p.pid, {}).get("rss_bytes", 0) > 1_000_000 for p in procs)
            return by_pid if ready else None

        deadline = time.monotonic() + 60
        while (by_pid := found()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert by_pid is not None
        assert by_pid[procs[0].pid]["role"] == "daemon" and by_pid[procs[1].pid]["role"] == "training"
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_status_says_when_the_database_is_unreachable(settings: Settings, tmp_path: Path) -> None:
    down = Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    c = TestClient(create_app(settings, down, watch_inbox=False))
    body = c.get("/v1/status").json()
    assert body["host"]["database"]["reachable"] is False and body["host"]["database"]["error"]
    assert "loops" not in body
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["reasons"][0].startswith("database unreachable")
    assert "nobody" not in r.text  # no URL or user name leaks to an unauthenticated caller


def test_readyz_ready_then_503_with_reasons(settings: Settings, db: Database) -> None:
    r = client(settings, db).get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True and r.json()["reasons"] == []

    full = settings.model_copy(update={"watch": settings.watch.model_copy(update={"disk_floor_gb": 10**9})})
    r = client(full, db).get("/readyz")
    assert r.status_code == 503 and "under the floor" in r.json()["reasons"][0]

    downgrade(db.engine, "0002")
    r = client(settings, db).get("/readyz")
    assert r.status_code == 503 and "run `learnloop db upgrade`" in r.json()["reasons"][0]
    db.upgrade()


def test_healthz_stays_minimal(settings: Settings, db: Database) -> None:
    r = client(settings, db).get("/healthz")
    assert r.status_code == 200 and db.url not in r.text


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_exposes_ingest_queue_jobs_training_serving_and_rewards(
    settings: Settings, db: Database
) -> None:
    seed_trajectories(db)
    ids = seed_loop(db)
    c = client(settings, db)
    before = _samples(c.get("/metrics").text)
    ingested = ("learnloop_ingest_records_total", (("kind", "trajectories"),))
    requests_ok = ("learnloop_ingest_requests_total", (("route", "/v1/ingest"), ("status", "200")))
    r = c.post(
        "/v1/ingest",
        json={"trajectories": [{"messages": chat("hi", "hello"), "scenario": "m"} for _ in range(3)]},
    )
    assert r.status_code == 200
    assert c.post("/v1/ingest", json={"trajectories": [{"messages": []}]}).status_code == 422
    metrics_mod.observe_serving("v0002", 17, 0.42)
    metrics_mod.observe_serving(None, 5, 0.1, status="error")

    m = _samples(c.get("/metrics").text)
    assert m[ingested] - before.get(ingested, 0) == 3
    assert m[requests_ok] - before.get(requests_ok, 0) == 1
    assert m[("learnloop_ingest_requests_total", (("route", "/v1/ingest"), ("status", "422")))] >= 1
    assert m[("learnloop_ingest_latency_seconds_count", (("route", "/v1/ingest"),))] >= 2
    assert m[("learnloop_queue_depth", ())] == 3
    assert m[("learnloop_jobs", (("state", "failed"),))] == 1
    assert m[("learnloop_jobs_failed", (("kind", "train"),))] == 1
    assert m[("learnloop_job_failures_total", ())] == 1
    assert m[("learnloop_job_duration_seconds_count", (("kind", "train"),))] == 2
    assert (
        m[("learnloop_job_duration_seconds_bucket", (("kind", "train"), ("le", "3600.0")))] == 1
    )  # the 30 minute run
    job = str(ids["running"])
    assert m[("learnloop_training_loss", (("job", job), ("kind", "train")))] == 1.25
    assert m[("learnloop_training_step", (("job", job), ("kind", "train")))] == 60
    assert m[("learnloop_training_tokens_per_second", (("job", job), ("kind", "train")))] == 321.5
    assert m[("learnloop_serving_tokens_total", (("version", "v0002"),))] >= 17
    assert m[("learnloop_serving_requests_total", (("status", "error"), ("version", "base")))] >= 1
    assert m[("learnloop_serving_latency_seconds_count", (("version", "v0002"),))] >= 1
    # served scores: 0.5 + 0.05 i for i < 10 -> mean 0.725 over the 10 served math rows,
    # plus production math rows.
    assert m[("learnloop_reward_count", (("name", "correct"), ("scenario", "math")))] == 16
    assert m[("learnloop_reward_mean", (("name", "resolved"), ("scenario", "support")))] == 1.0
    assert m[("learnloop_trajectories", (("source", "production"),))] == 16
    assert m[("learnloop_database_up", ())] == 1


def test_metrics_answers_when_the_database_is_down(settings: Settings) -> None:
    down = Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    r = TestClient(create_app(settings, down, watch_inbox=False)).get("/metrics")
    assert r.status_code == 200 and _samples(r.text)[("learnloop_database_up", ())] == 0


@pytest.mark.parametrize("n", [10_000])
def test_metric_series_is_downsampled_on_the_server(db: Database, n: int) -> None:
    from learnloop.store.models import Job, JobKind, TrainingMetric
    from learnloop.watch.queries import metric_series

    with db.session() as s:
        job = Job(kind=JobKind.train)
        s.add(job)
        s.flush()
        job_id = job.id
    with db.connection() as conn:
        conn.execute(
            TrainingMetric.__table__.insert(),
            [
                {
                    "job_id": job_id,
                    "step": i,
                    "loss": float(i % 10),
                    "learning_rate": 1e-4,
                    "tokens_per_s": 100.0,
                    "extra": {},
                }
                for i in range(1, n + 1)
            ],
        )
    with db.read_session() as s:
        series = metric_series(s, job_id, max_points=400)
        tail = metric_series(s, job_id, after_step=n - 5)
    assert series["count"] == n and 0 < len(series["points"]) <= 400 and series["bucket"] == 25
    assert series["points"][-1]["step"] == n
    # Buckets of 25 consecutive steps average the 0..9 saw-tooth to 4.5 (give or take one partial cycle).
    assert all(3.5 <= p["loss"] <= 5.5 for p in series["points"][:-1])
    assert [p["step"] for p in tail["points"]] == list(range(n - 4, n + 1))


def test_status_command_table_json_and_watch(tmp_path: Path, db: Database) -> None:
    import json
    import signal

    from api_support import LEARNLOOP, cli_env

    seed_trajectories(db)
    ids = seed_loop(db)
    env = cli_env(tmp_path / "data", LEARNLOOP_DATABASE_URL=db.url, COLUMNS="160")
    r = subprocess.run([*LEARNLOOP, "status", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["running_job"]["id"] == ids["running"] and body["serving"][0]["version"] == "v0002"
    assert [p for p in body["host"]["processes"] if p["self"]][0]["role"] == "cli"

    r = subprocess.run([*LEARNLOOP, "status"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for text in (
        "loops",
        "12 new trajectories, 50 needed",
        "60/200",
        "v0002",
        "v0003",
        "10%",
        "reject",
        "production",
        "reachable",
    ):
        assert text in r.stdout, text

    # --watch on a pipe: one full status per interval. Started with SIGINT ignored, as a background job
    # of a script or CI runner inherits it: Ctrl-C (SIGINT) must still end it at once.
    proc = subprocess.Popen(
        [*LEARNLOOP, "status", "--watch", "--interval", "0.5"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        seen = 0
        for line in proc.stdout:
            seen += line.startswith("loops")
            if seen == 2:
                break
        assert seen == 2
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=120)  # drains the pipe, so a slow child never blocks writing to it
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0

    down = cli_env(
        tmp_path / "data",
        LEARNLOOP_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2",
    )
    r = subprocess.run([*LEARNLOOP, "status"], env=down, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "unreachable" in r.stdout and "Traceback" not in r.stderr
