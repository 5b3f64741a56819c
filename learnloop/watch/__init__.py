"""Watch and steer: the status, health, Prometheus metrics, alerts, and everything the dashboard
shows and does. The HTTP layer (``learnloop.api``) and the CLI use this surface only.

Public surface::

    build_status(db, settings)                    # GET /v1/status, `learnloop status`, the overview page
    readiness(db, settings)                       # GET /readyz
    render_metrics(db) / observe_ingest(...) / count_ingested(...) / observe_serving(...)   # /metrics
    AlertService(db, settings), send_test(...), run_once(...), recent_deliveries(db)       # alerts
    PAGES, Params, navigation(), live_page(name)  # the dashboard's pages (a registry of views)
    control_job / promote_version / rollback_alias / set_alias_target / add_feedback   # its buttons
    JobFeed, EventFeed, resume_point, metric_points  # its live streams and charts
    FILTERS, human_bytes                          # how numbers read; TEMPLATES_DIR, STATIC_DIR
"""

from pathlib import Path

from learnloop.watch import pages  # noqa: F401 - registers the dashboard's pages
from learnloop.watch.actions import (
    add_feedback,
    control_job,
    promote_version,
    rollback_alias,
    set_alias_target,
)
from learnloop.watch.alerts import AlertService, recent_deliveries, run_once, send_test
from learnloop.watch.format import FILTERS, human_bytes, job_stage
from learnloop.watch.host import readiness
from learnloop.watch.metrics import count_ingested, count_otlp_spans, observe_ingest, observe_serving
from learnloop.watch.metrics import render as render_metrics
from learnloop.watch.status import build_status
from learnloop.watch.streams import EventFeed, JobFeed, metric_points, resume_point
from learnloop.watch.views import PAGES, Page, Params, live_page, navigation

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"

__all__ = [
    "PAGES",
    "STATIC_DIR",
    "TEMPLATES_DIR",
    "AlertService",
    "EventFeed",
    "FILTERS",
    "JobFeed",
    "Page",
    "Params",
    "add_feedback",
    "control_job",
    "build_status",
    "count_ingested",
    "count_otlp_spans",
    "human_bytes",
    "job_stage",
    "live_page",
    "metric_points",
    "navigation",
    "observe_ingest",
    "observe_serving",
    "promote_version",
    "readiness",
    "recent_deliveries",
    "render_metrics",
    "resume_point",
    "rollback_alias",
    "set_alias_target",
    "run_once",
    "send_test",
]
