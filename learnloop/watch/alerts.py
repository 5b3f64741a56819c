"""Alerts: `[[alerts]]` rules evaluated over what the stages record, delivered to webhooks.

Each pass of ``evaluate`` reads the tables (jobs, evaluations, events, alias_events,
training_metrics, trajectories) and the disk, and writes one ``alert_deliveries`` row per firing
rule and subject. The row's ``dedup_key`` is unique, so one fault (a failed job, a low disk) is
one alert however many passes see it; a lasting condition alerts again after ``repeat_hours``.
``deliver`` POSTs pending rows to the rule's webhook, retrying with exponential backoff, and
records ``alert.sent`` / ``alert.failed`` events. ``AlertService`` runs both in the server.

Rules only look at what happened since alerting started watching this database (the
``alerts.watch_from`` control row) and within the last day, so turning alerts on does not page
anyone about last month.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import socket
import statistics
import threading
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from learnloop.config import AlertRule, Settings
from learnloop.errors import ConfigError
from learnloop.masking import redact
from learnloop.store.db import Database
from learnloop.store.events import record_event
from learnloop.store.models import (
    AlertDelivery,
    AliasEvent,
    Control,
    Evaluation,
    Event,
    Job,
    JobState,
    TrainingMetric,
    utcnow,
)
from learnloop.watch.host import disk_health

log = logging.getLogger("learnloop.alerts")

WATCH_FROM_KEY = "alerts.watch_from"
LOOKBACK = dt.timedelta(days=1)
PROMOTE_ACTIONS = ("promote", "force", "restore")


@dataclass(frozen=True)
class Firing:
    """One rule firing for one subject (a job, an evaluation, the disk...)."""

    rule: AlertRule
    subject: str
    title: str
    message: str
    level: str = "warning"
    data: dict[str, Any] | None = None

    @property
    def dedup_key(self) -> str:
        return f"{self.rule.name}:{self.subject}"[:256]


def payload(firing: Firing, now: dt.datetime) -> dict[str, Any]:
    """What a webhook receives. ``text`` makes it a valid Slack message as is; the rest is for machines."""
    icon = {"error": ":rotating_light:", "warning": ":warning:"}.get(firing.level, ":information_source:")
    return {
        "text": f"{icon} learnloop: {firing.title}\n{firing.message}",
        "rule": firing.rule.name,
        "when": firing.rule.when,
        "level": firing.level,
        "title": firing.title,
        "message": firing.message,
        "subject": firing.subject,
        "data": firing.data or {},
        "host": socket.gethostname(),
        "created_at": now.isoformat(),
    }


def body_for(rule: AlertRule, data: dict[str, Any]) -> dict[str, Any]:
    return {"text": data["text"]} if rule.format == "slack" else data


# -- rules --------------------------------------------------------------------------------------


def _window_start(session: Any, now: dt.datetime) -> dt.datetime:
    row = session.get(Control, WATCH_FROM_KEY)
    if row is None:
        session.add(Control(key=WATCH_FROM_KEY, value={"at": now.isoformat()}, updated_at=now))
        return now
    return max(dt.datetime.fromisoformat(row.value["at"]), now - LOOKBACK)


def _bucket(now: dt.datetime, hours: float) -> int:
    return int(now.timestamp() // (hours * 3600))


def _job_failed(
    s: Any, rule: AlertRule, since: dt.datetime, now: dt.datetime, settings: Settings
) -> list[Firing]:
    rows = s.scalars(
        select(Job).where(Job.state == JobState.failed, Job.finished_at >= since).order_by(Job.id).limit(100)
    )
    return [
        Firing(
            rule,
            f"job:{j.id}",
            f"job {j.id} ({j.kind.value}) failed",
            f"after {j.attempts} attempt(s): {(j.error or 'no error recorded').strip()[:500]}",
            "error",
            {"job_id": j.id, "loop": j.loop, "error": j.error},
        )
        for j in rows
    ]


def _gate_rejected(
    s: Any, rule: AlertRule, since: dt.datetime, now: dt.datetime, settings: Settings
) -> list[Firing]:
    out: dict[str, Firing] = {}
    for e in s.scalars(
        select(Evaluation).where(Evaluation.verdict == "reject", Evaluation.created_at >= since).limit(100)
    ):
        reasons = (e.gate or {}).get("reasons") or []
        out[e.candidate_id] = Firing(
            rule,
            f"rejected:{e.candidate_id}",
            f"gate rejected {e.candidate_id}",
            "; ".join(map(str, reasons)) or f"evaluation {e.id} verdict: reject",
            "warning",
            {"version_id": e.candidate_id, "evaluation_id": e.id, "reasons": reasons},
        )
    for ev in s.scalars(
        select(Event).where(Event.kind == "version.rejected", Event.created_at >= since).limit(100)
    ):
        vid = ev.version_id or str(ev.id)
        out.setdefault(
            vid,
            Firing(
                rule,
                f"rejected:{vid}",
                f"gate rejected {vid}",
                ev.message or "version rejected",
                "warning",
                {"version_id": ev.version_id, "event_id": ev.id},
            ),
        )
    return list(out.values())


def _alias_moves(actions: tuple[str, ...], verb: str, level: str):  # noqa: ANN202 - a rule factory
    def rule_fn(
        s: Any, rule: AlertRule, since: dt.datetime, now: dt.datetime, settings: Settings
    ) -> list[Firing]:
        rows = s.scalars(
            select(AliasEvent)
            .where(AliasEvent.action.in_(actions), AliasEvent.created_at >= since)
            .order_by(AliasEvent.id)
            .limit(100)
        )
        return [
            Firing(
                rule,
                f"alias_event:{a.id}",
                f"{a.alias!r} {verb}: {a.from_version or 'base'} -> {a.to_version or 'base'}",
                f"by {a.actor or 'unknown'}" + (f": {a.reason}" if a.reason else ""),
                level,
                {"alias": a.alias, "from": a.from_version, "to": a.to_version, "action": a.action},
            )
            for a in rows
        ]

    return rule_fn


def _canary_fallback(
    s: Any, rule: AlertRule, since: dt.datetime, now: dt.datetime, settings: Settings
) -> list[Firing]:
    rows = s.scalars(
        select(Event)
        .where(Event.kind == "canary.fell_back", Event.created_at >= since)
        .order_by(Event.id)
        .limit(100)
    )
    return [
        Firing(
            rule,
            f"canary:{e.id}",
            f"canary of {e.version_id} fell back to the teacher",
            e.message,
            "error",
            {"version_id": e.version_id, **(e.data or {})},
        )
        for e in rows
    ]


def _recent_jobs(s: Any, since: dt.datetime) -> list[Job]:
    return list(
        s.scalars(
            select(Job)
            .where(or_(Job.state.in_([JobState.running, JobState.paused]), Job.finished_at >= since))
            .order_by(Job.id.desc())
            .limit(50)
        )
    )


def _last_losses(s: Any, job_id: int, n: int) -> list[tuple[int, float | None]]:
    q = (
        select(TrainingMetric.step, TrainingMetric.loss)
        .where(TrainingMetric.job_id == job_id)
        .order_by(TrainingMetric.step.desc())
        .limit(n)
    )
    return list(s.execute(q))


def _bad(x: Any) -> bool:
    """A NaN or infinite loss: a float, or the string JSON-strict writers use
    (PostgreSQL's JSONB refuses NaN)."""
    if isinstance(x, str):
        return x.strip().lower() in ("nan", "inf", "-inf", "infinity", "-infinity")
    return isinstance(x, (int, float)) and not math.isfinite(x)


def _loss_nan(
    s: Any, rule: AlertRule, since: dt.datetime, now: dt.datetime, settings: Settings
) -> list[Firing]:
    out = []
    for job in _recent_jobs(s, since):
        losses = _last_losses(s, job.id, 5)
        progress_loss = (job.progress or {}).get("loss")
        bad = next((step for step, loss in losses if _bad(loss)), None)
        if bad is None and _bad(progress_loss):
            bad = (job.progress or {}).get("step")
        if bad is not None:
            out.append(
                Firing(
                    rule,
                    f"job:{job.id}",
                    f"job {job.id}: loss is NaN/inf",
                    f"at step {bad}",
                    "error",
                    {"job_id": job.id, "step": bad},
                )
            )
    return out


def _loss_spike(
    s: Any, rule: AlertRule, since: dt.datetime, now: dt.datetime, settings: Settings
) -> list[Firing]:
    out = []
    for job in _recent_jobs(s, since):
        rows = _last_losses(s, job.id, rule.window + 1)
        finite = [(step, loss) for step, loss in rows if loss is not None and math.isfinite(loss)]
        if len(finite) < min(rule.window + 1, 4):
            continue
        (step, newest), baseline = finite[0], [loss for _, loss in finite[1:]]
        median = statistics.median(baseline)
        if median > 0 and newest > rule.spike_factor * median:
            # One alert per job per hour: a loss that stays high is one fault, not one per step.
            out.append(
                Firing(
                    rule,
                    f"job:{job.id}:h{_bucket(now, 1)}",
                    f"job {job.id}: loss spiked",
                    f"loss {newest:.4g} at step {step} is {newest / median:.1f}x the median {median:.4g} "
                    f"of the previous {len(baseline)} steps",
                    "warning",
                    {"job_id": job.id, "step": step, "loss": newest, "median": median},
                )
            )
    return out


def _disk_low(
    s: Any, rule: AlertRule, since: dt.datetime, now: dt.datetime, settings: Settings
) -> list[Firing]:
    floor = rule.min_free_gb if rule.min_free_gb is not None else settings.watch.disk_floor_gb
    disk = disk_health(settings.data_dir, floor)
    if disk["ok"]:
        return []
    return [
        Firing(
            rule,
            f"disk:{_bucket(now, rule.repeat_hours)}",
            "free disk below the floor",
            f"{disk['free_bytes'] / 1024**3:.2f} GB free at {disk['path']} (floor {floor} GB)",
            "error",
            {"free_bytes": disk["free_bytes"], "floor_gb": floor, "path": disk["path"]},
        )
    ]


def _no_trajectories(
    s: Any, rule: AlertRule, since: dt.datetime, now: dt.datetime, settings: Settings
) -> list[Firing]:
    from learnloop.watch.queries import latest_trajectory_at

    last = latest_trajectory_at(s)
    if last is None or now - last < dt.timedelta(hours=rule.hours):
        return []
    hours = (now - last).total_seconds() / 3600
    return [
        Firing(
            rule,
            f"stale:{last.isoformat()}:{_bucket(now, rule.repeat_hours)}",
            f"no new trajectories for {hours:.1f} hours",
            f"the newest was stored at {last.isoformat()}",
            "warning",
            {"last_at": last.isoformat(), "hours": hours},
        )
    ]


RULES = {
    "job_failed": _job_failed,
    "gate_rejected": _gate_rejected,
    "promotion": _alias_moves(PROMOTE_ACTIONS, "promoted", "info"),
    "rollback": _alias_moves(("rollback",), "rolled back", "warning"),
    "canary_fallback": _canary_fallback,
    "loss_nan": _loss_nan,
    "loss_spike": _loss_spike,
    "disk_low": _disk_low,
    "no_trajectories": _no_trajectories,
}


# -- evaluation and delivery ------------------------------------------------------------------


def _insert_ignore(db: Database) -> Any:
    return (pg_insert if db.dialect == "postgresql" else sqlite_insert)(AlertDelivery)


def evaluate(db: Database, settings: Settings, now: dt.datetime | None = None) -> list[str]:
    """Check every rule once; store a pending delivery for each new firing. Returns the new dedup keys."""
    now = now or utcnow()
    if not settings.alerts:
        return []
    new: list[str] = []
    with db.session() as s:
        since = _window_start(s, now)
        for rule in settings.alerts:
            try:
                firings = RULES[rule.when](s, rule, since, now, settings)
            except Exception:  # noqa: BLE001 - one broken rule must not silence the others
                log.exception("alert rule %s failed", rule.name)
                continue
            for f in firings:
                stmt = (
                    _insert_ignore(db)
                    .values(
                        rule=rule.name,
                        dedup_key=f.dedup_key,
                        state="pending",
                        attempts=0,
                        next_attempt_at=now,
                        payload=payload(f, now),
                        created_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=["dedup_key"])
                    .returning(AlertDelivery.id)
                )
                # RETURNING, not rowcount: psycopg reports -1 for an ORM-session insert.
                if s.execute(stmt).first() is not None:
                    new.append(f.dedup_key)
    return new


def post(rule: AlertRule, body: dict[str, Any], timeout: float) -> str | None:
    """POST one alert; None on a 2xx answer, else what went wrong."""
    headers = {name: value.get_secret_value() for name, value in rule.headers.items()}
    try:
        r = httpx.post(rule.url.get_secret_value(), json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        # The webhook URL and headers are secrets; the error is stored, logged and shown.
        return redact(f"{type(exc).__name__}: {exc}", rule)
    if 200 <= r.status_code < 300:
        return None
    return redact(f"HTTP {r.status_code}: {r.text[:200]}", rule)


def deliver(db: Database, settings: Settings, now: dt.datetime | None = None) -> dict[str, int]:
    """Send every due pending delivery once; failures are rescheduled with exponential backoff."""
    now = now or utcnow()
    rules = {r.name: r for r in settings.alerts}
    counts = {"sent": 0, "retry": 0, "failed": 0}
    with db.read_session() as s:
        due = list(
            s.execute(
                select(AlertDelivery.id, AlertDelivery.next_attempt_at)
                .where(
                    AlertDelivery.state == "pending",
                    or_(AlertDelivery.next_attempt_at.is_(None), AlertDelivery.next_attempt_at <= now),
                )
                .order_by(AlertDelivery.id)
                .limit(100)
            )
        )
    w = settings.watch
    for delivery_id, planned in due:
        # Claim it (another server on the same database may be delivering too).
        with db.session() as s:
            claimed = s.execute(
                update(AlertDelivery)
                .where(
                    AlertDelivery.id == delivery_id,
                    AlertDelivery.state == "pending",
                    AlertDelivery.next_attempt_at.is_(None)
                    if planned is None
                    else AlertDelivery.next_attempt_at == planned,
                )
                .values(next_attempt_at=now + dt.timedelta(seconds=w.alert_timeout_s * 2 + 1))
            ).rowcount
        if not claimed:
            continue
        with db.read_session() as s:
            row = s.get(AlertDelivery, delivery_id)
            rule_name, data, attempts = row.rule, dict(row.payload), row.attempts
        rule = rules.get(rule_name)
        error = (
            post(rule, body_for(rule, data), w.alert_timeout_s)
            if rule
            else f"rule {rule_name!r} is no longer configured"
        )
        with db.session() as s:
            row = s.get(AlertDelivery, delivery_id)
            row.attempts = attempts + 1
            if error is None:
                row.state, row.sent_at, row.error, row.next_attempt_at = "sent", utcnow(), None, None
                record_event(
                    s,
                    "alert.sent",
                    f"{rule_name}: {data.get('title')}",
                    data={"delivery_id": delivery_id, "rule": rule_name, "dedup_key": row.dedup_key},
                )
                counts["sent"] += 1
            elif row.attempts >= w.alert_max_attempts or rule is None:
                row.state, row.error, row.next_attempt_at = "failed", error, None
                record_event(
                    s,
                    "alert.failed",
                    f"{rule_name}: {data.get('title')} not delivered after {row.attempts} attempts: {error}",
                    level="error",
                    data={"delivery_id": delivery_id, "rule": rule_name, "error": error},
                )
                counts["failed"] += 1
            else:
                row.error = error
                row.next_attempt_at = utcnow() + dt.timedelta(
                    seconds=w.alert_backoff_s * 2 ** (row.attempts - 1)
                )
                counts["retry"] += 1
    return counts


def run_once(db: Database, settings: Settings) -> dict[str, Any]:
    new = evaluate(db, settings)
    return {"new": new, **deliver(db, settings)}


def send_test(
    db: Database | None,
    settings: Settings,
    *,
    rule_name: str | None = None,
    url: str | None = None,
    attempts: int = 3,
) -> list[dict[str, Any]]:
    """Send a test alert to each configured webhook (or one rule, or a given URL), retrying a few times."""
    if url:
        targets = [AlertRule(name="test", when="job_failed", url=url)]
    else:
        targets = [r for r in settings.alerts if rule_name in (None, r.name)]
        if not targets:
            raise ConfigError(
                f"No [[alerts]] rule named {rule_name!r}."
                if rule_name
                else "No [[alerts]] rules are configured; add one to learnloop.toml or pass --url."
            )
    now = utcnow()
    results = []
    for rule in targets:
        data = payload(
            Firing(
                rule,
                "test",
                "test alert",
                f"a test of rule {rule.name!r} ({rule.when}) sent by `learnloop alerts test`",
                "info",
                {"test": True},
            ),
            now,
        )
        error = None
        for i in range(attempts):
            error = post(rule, body_for(rule, data), settings.watch.alert_timeout_s)
            if error is None:
                break
            threading.Event().wait(min(settings.watch.alert_backoff_s * 2**i, 5))
        results.append({"rule": rule.name, "url": str(rule.url), "ok": error is None, "error": error})
        if db is not None:
            record_event(
                db,
                "alert.sent" if error is None else "alert.failed",
                f"test alert to {rule.name}: {'sent' if error is None else error}",
                level="info" if error is None else "error",
                data={"rule": rule.name, "test": True, "error": error},
            )
    return results


class AlertService:
    """Evaluates the rules and delivers alerts every ``watch.alert_interval_s`` in a background thread."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db, self.settings = db, settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="learnloop-alerts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                run_once(self.db, self.settings)
            except Exception:  # noqa: BLE001 - the database may be down for a while; try again next interval
                log.exception("alert pass failed")
            self._stop.wait(self.settings.watch.alert_interval_s)


def recent_deliveries(db: Database, limit: int = 20) -> list[dict[str, Any]]:
    """The newest alert deliveries, newest first: when, rule, state, title, attempts, error."""
    with db.read_session() as s:
        rows = s.scalars(select(AlertDelivery).order_by(AlertDelivery.id.desc()).limit(limit))
        return [
            {
                "id": r.id,
                "created_at": r.created_at.isoformat(),
                "rule": r.rule,
                "state": r.state,
                "title": (r.payload or {}).get("title", ""),
                "attempts": r.attempts,
                "error": r.error,
            }
            for r in rows
        ]
