"""Prometheus metrics at /metrics (the official prometheus_client).

Two kinds:

* Process counters and histograms that code calls as things happen: ingest requests, records and
  latency (the ingest route), serving requests, tokens and latency per version
  (``observe_serving``, for the serving stage).
* Gauges read from the database at scrape time (``DatabaseCollector``): queue depth, jobs by
  state, job durations and failures, the running jobs' loss/step/tokens per second, reward means
  per scenario, trajectories by source. They are true for every process sharing the database.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from learnloop.store.db import Database
from learnloop.store.models import Event, Job, JobState, utcnow

log = logging.getLogger("learnloop.metrics")

# One registry for learnloop's process metrics (not the client's global one, so embedding apps
# and repeated test apps do not collide).
REGISTRY = CollectorRegistry(auto_describe=True)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
JOB_BUCKETS = (10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0)

INGEST_REQUESTS = Counter(
    "learnloop_ingest_requests",
    "Ingest requests answered, by route and status.",
    ["route", "status"],
    registry=REGISTRY,
)
INGEST_RECORDS = Counter(
    "learnloop_ingest_records",
    "Records ingested, by kind (trajectories, duplicates, feedback, scores).",
    ["kind"],
    registry=REGISTRY,
)
INGEST_LATENCY = Histogram(
    "learnloop_ingest_latency_seconds",
    "Ingest request latency.",
    ["route"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
SERVING_REQUESTS = Counter(
    "learnloop_serving_requests",
    "Chat completions served, by version and outcome.",
    ["version", "status"],
    registry=REGISTRY,
)
SERVING_TOKENS = Counter(
    "learnloop_serving_tokens", "Completion tokens generated, by version.", ["version"], registry=REGISTRY
)
SERVING_LATENCY = Histogram(
    "learnloop_serving_latency_seconds",
    "Chat completion latency, by version.",
    ["version"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
OTLP_SPANS = Counter(
    "learnloop_otlp_spans",
    "Spans received on /otlp/v1/traces, by outcome: accepted (an LLM call, stored or waiting for its "
    "trace's root span), ignored (not an LLM call), rejected (an LLM call that could not be stored).",
    ["outcome"],
    registry=REGISTRY,
)


def observe_ingest(route: str, status: int, seconds: float) -> None:
    """Count one answered ingest request and its latency (called by the timing middleware)."""
    INGEST_REQUESTS.labels(route=route, status=str(status)).inc()
    INGEST_LATENCY.labels(route=route).observe(seconds)


def count_ingested(result: dict[str, Any]) -> dict[str, Any]:
    """Count what one committed ingest stored; returns ``result`` so a route can wrap its answer."""
    for kind, key in (
        ("trajectories", "inserted"),
        ("duplicates", "duplicates"),
        ("feedback", "feedback_inserted"),
        ("scores", "scores_inserted"),
    ):
        if result.get(key):
            INGEST_RECORDS.labels(kind=kind).inc(result[key])
    return result


def count_otlp_spans(outcome: str, n: int) -> None:
    """Count ``n`` spans of one OTLP export by outcome (accepted, ignored, rejected)."""
    if n:
        OTLP_SPANS.labels(outcome=outcome).inc(n)


def observe_serving(version: str | None, tokens: int, seconds: float, *, status: str = "ok") -> None:
    """Count one served chat completion: ``version`` is the version id (None: the base model)."""
    label = version or "base"
    SERVING_REQUESTS.labels(version=label, status=status).inc()
    if tokens:
        SERVING_TOKENS.labels(version=label).inc(tokens)
    SERVING_LATENCY.labels(version=label).observe(seconds)


def serving_snapshot() -> list[dict[str, Any]]:
    """This process's serving counters per version (for the dashboard's serving page)."""
    out: dict[str, dict[str, Any]] = {}
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            version = sample.labels.get("version")
            if version is None:
                continue
            row = out.setdefault(
                version,
                {
                    "version": version,
                    "requests": 0.0,
                    "errors": 0.0,
                    "tokens": 0.0,
                    "latency_sum": 0.0,
                    "latency_count": 0.0,
                },
            )
            if sample.name == "learnloop_serving_requests_total":
                row["requests"] += sample.value
                if sample.labels.get("status") != "ok":
                    row["errors"] += sample.value
            elif sample.name == "learnloop_serving_tokens_total":
                row["tokens"] += sample.value
            elif sample.name == "learnloop_serving_latency_seconds_sum":
                row["latency_sum"] += sample.value
            elif sample.name == "learnloop_serving_latency_seconds_count":
                row["latency_count"] += sample.value
    for row in out.values():
        row["latency_mean_s"] = row["latency_sum"] / row["latency_count"] if row["latency_count"] else None
    return sorted(out.values(), key=lambda r: r["version"])


class DatabaseCollector(Collector):
    """Gauges computed from the database when Prometheus scrapes."""

    def __init__(self, db: Database, window_hours: float = 168.0) -> None:
        self.db = db
        self.window = dt.timedelta(hours=window_hours)

    def collect(self) -> Iterator[Metric]:
        from learnloop.watch import queries

        up = GaugeMetricFamily("learnloop_database_up", "1 when the database answered this scrape.")
        try:
            with self.db.read_session() as s:
                queue = queries.queue_summary(s)
                active = queries.active_jobs(s)
                durations = [
                    (kind, (fin - start).total_seconds())
                    for kind, start, fin in s.execute(
                        select(Job.kind, Job.started_at, Job.finished_at)
                        .where(Job.finished_at.is_not(None), Job.started_at.is_not(None))
                        .order_by(Job.finished_at.desc())
                        .limit(5000)
                    )
                ]
                failures = s.execute(
                    select(Job.kind, func.count()).where(Job.state == JobState.failed).group_by(Job.kind)
                ).all()
                failed_events = (
                    s.scalar(select(func.count()).select_from(Event).where(Event.kind == "job.failed")) or 0
                )
                rewards = queries.reward_means(s, utcnow() - self.window)
                counts = queries.trajectory_counts(s)
        except Exception as exc:  # noqa: BLE001 - a scrape must still answer, saying the database is down
            log.warning("metrics: database unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        depth = GaugeMetricFamily("learnloop_queue_depth", "Jobs waiting to run.")
        depth.add_metric([], queue["depth"])
        yield depth
        jobs = GaugeMetricFamily("learnloop_jobs", "Jobs by state.", labels=["state"])
        for state, n in queue["by_state"].items():
            jobs.add_metric([state], n)
        yield jobs
        failed = GaugeMetricFamily("learnloop_jobs_failed", "Jobs in state failed, by kind.", labels=["kind"])
        for kind, n in failures:
            failed.add_metric([getattr(kind, "value", kind)], n)
        yield failed
        failed_total = CounterMetricFamily(
            "learnloop_job_failures", "job.failed events recorded (every failed attempt)."
        )
        failed_total.add_metric([], failed_events)
        yield failed_total
        yield _histogram(
            "learnloop_job_duration_seconds", "Duration of finished jobs (newest 5000), by kind.", durations
        )

        loss = GaugeMetricFamily(
            "learnloop_training_loss", "Latest loss of each running job.", labels=["job", "kind"]
        )
        step = GaugeMetricFamily(
            "learnloop_training_step", "Latest step of each running job.", labels=["job", "kind"]
        )
        tps = GaugeMetricFamily(
            "learnloop_training_tokens_per_second", "Throughput of each running job.", labels=["job", "kind"]
        )
        total = GaugeMetricFamily(
            "learnloop_training_total_steps", "Planned steps of each running job.", labels=["job", "kind"]
        )
        for j in active:
            labels = [str(j["id"]), j["kind"]]
            for fam, key in ((loss, "loss"), (step, "step"), (tps, "tokens_per_s"), (total, "total_steps")):
                if j.get(key) is not None:
                    fam.add_metric(labels, j[key])
        yield from (loss, step, tps, total)

        mean = GaugeMetricFamily(
            "learnloop_reward_mean",
            "Mean score per scenario and aspect over the metrics window.",
            labels=["scenario", "name"],
        )
        n = GaugeMetricFamily(
            "learnloop_reward_count",
            "Scores per scenario and aspect over the metrics window.",
            labels=["scenario", "name"],
        )
        for r in rewards:
            if r["mean"] is not None:
                mean.add_metric([r["scenario"], r["name"]], r["mean"])
            n.add_metric([r["scenario"], r["name"]], r["count"])
        yield from (mean, n)

        stored = GaugeMetricFamily(
            "learnloop_trajectories", "Trajectories stored, by source.", labels=["source"]
        )
        for source, c in counts["by_source"].items():
            stored.add_metric([source], c["total"])
        yield stored


def _histogram(name: str, doc: str, values: list[tuple[Any, float]]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=["kind"])
    by_kind: dict[str, list[float]] = {}
    for kind, v in values:
        by_kind.setdefault(getattr(kind, "value", kind), []).append(v)
    for kind, vs in sorted(by_kind.items()):
        buckets = [(str(b), sum(1 for v in vs if v <= b)) for b in JOB_BUCKETS] + [("+Inf", len(vs))]
        fam.add_metric([kind], buckets, sum_value=sum(vs))
    return fam


def render(db: Database, window_hours: float = 168.0) -> bytes:
    """The text exposition of the process metrics plus the database gauges."""
    started = time.perf_counter()
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(DatabaseCollector(db, window_hours))
    body = generate_latest(REGISTRY) + generate_latest(scrape)
    log.debug("metrics rendered in %.1f ms", (time.perf_counter() - started) * 1000)
    return body
