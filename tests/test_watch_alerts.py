"""Alert rules over real rows, delivered to a real local HTTP receiver: dedup,
retries with backoff, events."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from watch_support import seed_loop, seed_trajectories

from api_support import LEARNLOOP, cli_env
from learnloop.config import AlertRule, Settings
from learnloop.errors import Conflict
from learnloop.store.db import Database
from learnloop.store.events import recent_events
from learnloop.store.models import AlertDelivery, Control, Job, JobKind, JobState, TrainingMetric, utcnow
from learnloop.watch import actions, alerts


class Receiver:
    """A webhook: records every POST body; answers ``fail_first`` requests with 500 first."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.calls += 1
                if outer.calls <= outer.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"try later")
                    return
                outer.bodies.append({"body": body, "auth": self.headers.get("Authorization")})
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@contextlib.contextmanager
def receiver(fail_first: int = 0) -> Iterator[Receiver]:
    r = Receiver(fail_first)
    t = threading.Thread(target=r.server.serve_forever, daemon=True)
    t.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


def with_rules(settings: Settings, *rules: AlertRule, **watch: Any) -> Settings:
    return settings.model_copy(
        update={
            "alerts": list(rules),
            "watch": settings.watch.model_copy(update={"alert_backoff_s": 0.0, **watch}),
        }
    )


def watch_from(db: Database, when: dt.datetime) -> None:
    with db.session() as s:
        s.merge(Control(key=alerts.WATCH_FROM_KEY, value={"at": when.isoformat()}))


def test_rules_fire_once_per_fault_and_deliver(settings: Settings, db: Database) -> None:
    watch_from(db, utcnow() - dt.timedelta(hours=3))
    seed_trajectories(db)
    ids = seed_loop(db)  # a job failed 10 minutes ago, v0003 was rejected, v0001 and v0002 were promoted
    with receiver() as hook:
        s = with_rules(
            settings,
            AlertRule(
                name="failures", when="job_failed", url=hook.url, headers={"Authorization": "Bearer hook"}
            ),
            AlertRule(name="gate", when="gate_rejected", url=hook.url),
            AlertRule(name="promotions", when="promotion", url=hook.url, format="slack"),
            AlertRule(name="rollbacks", when="rollback", url=hook.url),
        )
        first = alerts.evaluate(db, s)
        assert sorted(first) == sorted(
            [f"failures:job:{ids['failed']}", "gate:rejected:v0003"]
            + [k for k in first if k.startswith("promotions:alias_event:")]
        )
        assert len([k for k in first if k.startswith("promotions:")]) == 2
        assert alerts.evaluate(db, s) == []  # the same faults: no new alerts
        assert alerts.deliver(db, s) == {"sent": 4, "retry": 0, "failed": 0}
        assert alerts.deliver(db, s) == {"sent": 0, "retry": 0, "failed": 0}

        by_rule = {b["body"].get("rule", "slack"): b for b in hook.bodies}
        failed = by_rule["failures"]
        assert failed["auth"] == "Bearer hook" and failed["body"]["level"] == "error"
        assert "CUDA out of memory" in failed["body"]["message"] and failed["body"]["text"].startswith(
            ":rotating_light:"
        )
        assert by_rule["gate"]["body"]["data"]["reasons"] == ["win rate 0.41 < 0.5"]
        slack = [b["body"] for b in hook.bodies if set(b["body"]) == {"text"}]
        assert len(slack) == 2 and "promoted" in slack[0]["text"]

        # A rollback from the dashboard is a new fault: one more alert, to the rollback rule only.
        actions.rollback_alias(db, s, actor="tester")
        (new,) = alerts.evaluate(db, s)
        assert new.startswith("rollbacks:alias_event:")
        assert alerts.deliver(db, s)["sent"] == 1
        assert (
            "rolled back" in hook.bodies[-1]["body"]["title"]
            and "v0002 -> v0001" in hook.bodies[-1]["body"]["title"]
        )

        # The dashboard's promote goes through the registry's gate: the rejected v0003 is refused (no move,
        # no alert) until a person forces it, which is a promotion like any other.
        with pytest.raises(Conflict, match="gate said reject"):
            actions.promote_version(db, s, "v0003", actor="tester")
        assert alerts.evaluate(db, s) == []
        actions.promote_version(db, s, "v0003", actor="tester", force=True)
        (forced,) = alerts.evaluate(db, s)
        assert forced.startswith("promotions:alias_event:") and alerts.deliver(db, s)["sent"] == 1
        assert "v0003" in hook.bodies[-1]["body"]["text"]
    sent = recent_events(db, kinds=["alert.sent"])
    assert len(sent) == 6
    listed = alerts.recent_deliveries(db, limit=10)  # what `learnloop alerts list` prints
    assert len(listed) == 6 and {d["state"] for d in listed} == {"sent"}
    assert {d["rule"] for d in listed} == {"failures", "gate", "promotions", "rollbacks"}
    assert [d["id"] for d in listed] == sorted((d["id"] for d in listed), reverse=True)
    env = cli_env(settings.data_dir, LEARNLOOP_DATABASE_URL=db.url)
    r = subprocess.run([*LEARNLOOP, "alerts", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.count(" sent ") == 6 and "gate: " in r.stdout, r.stderr


def test_history_before_alerting_started_is_not_sent(settings: Settings, db: Database) -> None:
    seed_loop(db)  # the failure happened 10 minutes ago
    watch_from(db, utcnow())
    with receiver() as hook:
        assert (
            alerts.evaluate(db, with_rules(settings, AlertRule(name="f", when="job_failed", url=hook.url)))
            == []
        )


def test_delivery_retries_with_backoff_then_gives_up(settings: Settings, db: Database) -> None:
    watch_from(db, utcnow() - dt.timedelta(hours=1))
    seed_loop(db)
    with receiver(fail_first=2) as hook:
        s = with_rules(
            settings,
            AlertRule(name="f", when="job_failed", url=hook.url),
            alert_backoff_s=30.0,
            alert_max_attempts=3,
        )
        alerts.evaluate(db, s)
        now = utcnow()
        assert alerts.deliver(db, s, now) == {"sent": 0, "retry": 1, "failed": 0}
        with db.read_session() as ses:
            row = ses.scalars(select(AlertDelivery)).one()
            assert row.state == "pending" and row.attempts == 1 and "HTTP 500" in row.error
            assert 29 <= (row.next_attempt_at - now).total_seconds() <= 32  # first backoff
        assert alerts.deliver(db, s, now + dt.timedelta(seconds=5)) == {
            "sent": 0,
            "retry": 0,
            "failed": 0,
        }  # not due yet
        assert alerts.deliver(db, s, now + dt.timedelta(seconds=31)) == {"sent": 0, "retry": 1, "failed": 0}
        with db.read_session() as ses:
            row = ses.scalars(select(AlertDelivery)).one()
            assert row.attempts == 2 and (row.next_attempt_at - now).total_seconds() > 55  # doubled
        assert alerts.deliver(db, s, now + dt.timedelta(minutes=3)) == {"sent": 1, "retry": 0, "failed": 0}
        assert hook.calls == 3 and len(hook.bodies) == 1

    dead = with_rules(
        settings,
        AlertRule(name="g", when="gate_rejected", url="http://127.0.0.1:1/nothing"),
        alert_max_attempts=2,
    )
    alerts.evaluate(db, dead)
    alerts.deliver(db, dead)
    assert alerts.deliver(db, dead, utcnow() + dt.timedelta(seconds=1)) == {
        "sent": 0,
        "retry": 0,
        "failed": 1,
    }
    (failed,) = recent_events(db, kinds=["alert.failed"])
    assert failed.level == "error" and "not delivered after 2 attempts" in failed.message


def _job_with_losses(db: Database, losses: list[float | None], progress: dict[str, Any] | None = None) -> int:
    with db.session() as s:
        job = Job(kind=JobKind.train, state=JobState.running, started_at=utcnow(), progress=progress or {})
        s.add(job)
        s.flush()
        for i, loss in enumerate(losses, start=1):
            s.add(TrainingMetric(job_id=job.id, step=i, loss=loss))
        return job.id


def test_loss_spike_and_nan(settings: Settings, db: Database) -> None:
    watch_from(db, utcnow() - dt.timedelta(hours=1))
    steady = _job_with_losses(db, [1.0 + 0.01 * (i % 3) for i in range(30)])
    spiked = _job_with_losses(db, [1.0 + 0.01 * (i % 3) for i in range(30)] + [9.0])
    # SQLite stores a NaN REAL as NULL, so there the NaN rides in the job's progress (SQLite's JSON keeps
    # it; PostgreSQL's JSONB refuses it, and its REAL column keeps the NaN instead).
    progress = {"step": 3, "loss": float("nan")} if db.dialect == "sqlite" else {"step": 3}
    nan = _job_with_losses(db, [1.0, 0.9, float("nan")], progress=progress)
    nan_text = _job_with_losses(db, [1.0], progress={"step": 1, "loss": "NaN"})
    with receiver() as hook:
        s = with_rules(
            settings,
            AlertRule(name="spike", when="loss_spike", url=hook.url, window=20, spike_factor=3),
            AlertRule(name="nan", when="loss_nan", url=hook.url),
        )
        keys = alerts.evaluate(db, s)
        assert any(k.startswith(f"spike:job:{spiked}:") for k in keys)
        assert f"nan:job:{nan}" in keys and f"nan:job:{nan_text}" in keys
        assert not any(f"job:{steady}" in k for k in keys)
        assert alerts.evaluate(db, s) == []
        alerts.deliver(db, s)
        spike = next(b["body"] for b in hook.bodies if b["body"]["rule"] == "spike")
        assert spike["data"]["loss"] == 9.0 and math.isclose(spike["data"]["median"], 1.01)


def test_disk_low_and_no_trajectories_repeat_after_their_period(settings: Settings, db: Database) -> None:
    watch_from(db, utcnow() - dt.timedelta(hours=1))
    old = utcnow() - dt.timedelta(hours=40)
    from learnloop.store.records import parse_batch
    from learnloop.store.trajectories import ingest

    with db.session() as ses:
        ingest(
            ses,
            parse_batch(
                {"trajectories": [{"messages": [{"role": "user", "content": "hi"}], "created_at": old}]}
            ),
        )
    with receiver() as hook:
        s = with_rules(
            settings,
            AlertRule(name="disk", when="disk_low", url=hook.url, min_free_gb=10**9, repeat_hours=6),
            AlertRule(name="quiet", when="no_trajectories", url=hook.url, hours=24, repeat_hours=6),
        )
        # The start of the current 6-hour period, so "one hour later" stays inside it.
        period = 6 * 3600
        now = dt.datetime.fromtimestamp(utcnow().timestamp() // period * period + 60, dt.UTC)
        assert sorted(k.split(":")[0] for k in alerts.evaluate(db, s, now)) == ["disk", "quiet"]
        assert alerts.evaluate(db, s, now + dt.timedelta(hours=1)) == []
        assert len(alerts.evaluate(db, s, now + dt.timedelta(hours=6, minutes=1))) == 2
        alerts.deliver(db, s, now + dt.timedelta(hours=7))
        quiet = next(b["body"] for b in hook.bodies if b["body"]["rule"] == "quiet")
        assert quiet["title"].startswith("no new trajectories for") and quiet["data"]["hours"] > 30
    fine = with_rules(
        settings, AlertRule(name="quiet2", when="no_trajectories", url="http://127.0.0.1:1/", hours=48)
    )
    assert alerts.evaluate(db, fine) == []


def test_alerts_test_command_over_real_http(tmp_path: Path, sqlite_db: Database) -> None:
    with receiver(fail_first=1) as hook:
        config = tmp_path / "learnloop.toml"
        config.write_text(
            f'[[alerts]]\nname = "ops"\nwhen = "job_failed"\nurl = "{hook.url}"\nformat = "slack"\n'
            "[watch]\nalert_backoff_s = 0.01\n"
        )
        env = cli_env(tmp_path / "data", LEARNLOOP_DATABASE_URL=sqlite_db.url, LEARNLOOP_CONFIG=str(config))
        r = subprocess.run(
            [*LEARNLOOP, "alerts", "test"], env=env, capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
        assert "ops: sent" in r.stdout
        assert (
            hook.calls == 2
            and hook.bodies[0]["body"].keys() == {"text"}
            and "test alert" in hook.bodies[0]["body"]["text"]
        )
    r = subprocess.run(
        [*LEARNLOOP, "alerts", "test", "--url", "http://127.0.0.1:1/x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "FAILED" in r.stdout
    r = subprocess.run(
        [*LEARNLOOP, "alerts", "test", "--rule", "nope"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1 and "No [[alerts]] rule named 'nope'" in r.stderr and "Traceback" not in r.stderr
    assert [e.kind for e in recent_events(sqlite_db, kinds=["alert.sent", "alert.failed"])] == [
        "alert.failed",
        "alert.sent",
    ]


def test_server_runs_the_alert_service(settings: Settings, sqlite_db: Database) -> None:
    from api_support import live_server
    from learnloop.api.app import create_app

    watch_from(sqlite_db, utcnow() - dt.timedelta(hours=1))
    seed_loop(sqlite_db)
    with receiver() as hook:
        s = with_rules(settings, AlertRule(name="f", when="job_failed", url=hook.url), alert_interval_s=0.2)
        with live_server(create_app(s, sqlite_db, watch_inbox=False)):
            import time

            deadline = time.monotonic() + 60
            while not hook.bodies and time.monotonic() < deadline:
                time.sleep(0.1)
        assert len(hook.bodies) == 1 and hook.bodies[0]["body"]["rule"] == "f"
