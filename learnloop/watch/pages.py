"""The dashboard's pages: one registered view each (see ``learnloop.watch.views``).

Registration order is the navigation's order. A view reads through the stages' own views of their
objects (a job as the daemon shows it, a version as the registry does) and the watch queries, and
returns what its template needs; it never renders and never knows about HTTP.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from learnloop.config import Settings
from learnloop.errors import NotFound
from learnloop.store.db import Database
from learnloop.store.models import utcnow
from learnloop.watch import evaluations as eval_table
from learnloop.watch import queries, rewards, trajectories
from learnloop.watch.format import job_stage
from learnloop.watch.status import build_status
from learnloop.watch.views import Params, page

_STATUS_PARTS = (
    "loops",
    "control",
    "queue",
    "running",
    "running_job",
    "serving",
    "last_evaluation",
    "trajectories",
)
# What each version state means (the README's words; the registry's state_of decides them).
VERSION_STATES = {
    "serving": "an alias serves it now (its version, or its A/B candidate with a share of the traffic)",
    "archived": "it served before and no alias serves it now; rollback or restore can bring it back",
    "rejected": "it never served and its latest gate verdict is reject",
    "candidate": "it never served and the gate has not rejected it",
}
STAGES = ("capture", "score", "datasets", "train", "registry", "evaluate", "serve")


# -- overview ------------------------------------------------------------------------------------


@page("overview", "/", title="Overview", live=True)
def overview(db: Database, settings: Settings, params: Params) -> dict[str, Any]:
    from learnloop.datasets import list_datasets

    # Without the database the status holds only the host's health: the other parts read as empty.
    status = {**dict.fromkeys(_STATUS_PARTS), **build_status(db, settings, self_role="server")}
    extra: dict[str, Any] = {}
    events: list[dict[str, Any]] = []
    if status["host"]["database"]["reachable"]:
        with db.read_session() as s:
            latest = queries.versions(s, limit=1)
            extra["latest_version"] = latest[0] if latest else None
            ds = list_datasets(s, limit=1)
            extra["latest_dataset"] = (
                {"id": ds[0].id, "kind": ds[0].kind, "count": ds[0].count} if ds else None
            )
            extra["scored_share"] = rewards.scored_share(s, utcnow() - dt.timedelta(days=7))
            events = queries.events_after(s, None, limit=12)
            events.reverse()
            extra["known_versions"] = queries.version_ids(s)
    loops = status.get("loops") or []
    countdowns = [lp["next_check_in_s"] for lp in loops if lp.get("next_check_in_s") is not None]
    return {
        "known_versions": extra.get("known_versions", set()),
        "status": status,
        "stages": _stage_states(status, extra, params.server),
        "loops_configured": len(settings.loops),
        "serving_off": params.server.get("serving_off") if params.server.get("serving") is False else None,
        "events": events,
        "next_check_in_s": min(countdowns) if countdowns else None,
    }


def _stage_states(status: dict[str, Any], extra: dict[str, Any], server: Any = None) -> list[dict[str, Any]]:
    """One box per stage of the loop: its state (ok, busy, warn, error, idle), a line, a link."""
    server = server or {}
    t = status.get("trajectories") or {}
    running = status.get("running_job")
    queue = (status.get("queue") or {}).get("by_state", {})
    ev = status.get("last_evaluation")
    serving = status.get("serving") or []
    latest = extra.get("latest_version")
    dataset = extra.get("latest_dataset")
    known = extra.get("known_versions", set())
    out = []

    def add(name: str, state: str, detail: str, href: str) -> None:
        out.append({"name": name, "state": state, "detail": detail, "href": href})

    add(
        "capture",
        "ok" if t.get("today") else "idle",
        f"{t.get('today', 0):,} today · {t.get('total', 0):,} total",
        "/trajectories",
    )
    add(
        "score",
        "ok" if extra.get("scored_share") else "idle",
        f"{(extra.get('scored_share') or 0) * 100:.0f}% of recent scored",
        "/rewards",
    )
    add(
        "datasets",
        "ok" if dataset else "idle",
        f"#{dataset['id']} {dataset['kind']} · {dataset['count']:,} rows" if dataset else "none yet",
        f"/datasets/{dataset['id']}" if dataset else "/datasets",
    )
    if running:
        add(
            "train",
            "busy" if running["state"] == "running" else "warn",
            f"job {running['id']} {running['state']} · {job_stage(running)}",
            f"/jobs/{running['id']}",
        )
    else:
        add(
            "train",
            "error" if queue.get("failed") and not queue.get("succeeded") else "idle",
            f"{queue.get('queued', 0)} queued · {queue.get('failed', 0)} failed",
            "/jobs",
        )
    add(
        "registry",
        "ok" if latest else "idle",
        f"{latest['id']} {latest['state']}" if latest else "no versions",
        f"/versions/{latest['id']}" if latest else "/versions",
    )
    if ev:
        add(
            "evaluate",
            "ok" if ev["verdict"] == "promote" else ("error" if ev["verdict"] == "reject" else "warn"),
            f"{ev['candidate_id']}: {ev['verdict']}",
            f"/versions/{ev['candidate_id']}" if ev["candidate_id"] in known else "/versions",
        )
    else:
        add("evaluate", "idle", "no evaluations", "/versions")
    main = next((a for a in serving if a["alias"] == "learnloop"), serving[0] if serving else None)
    # This server's OpenAI routes answer only with a model loaded: say so rather than name one.
    off = server.get("serving") is False
    if main:
        split = (
            f" · {main['split'] * 100:.0f}% → {main['candidate']}"
            if main["candidate"] and main["split"]
            else ""
        )
        here = " · not served here: no model loaded" if off else ""
        add("serve", "warn" if off else "ok", f"{main['alias']} → {main['version']}{split}{here}", "/serving")
    elif off:
        add(
            "serve",
            "warn",
            "no model prepared: /v1 answers 503 (`learnloop models prepare smollm2`)",
            "/serving",
        )
    else:
        model = server.get("serving_model")
        add("serve", "idle", f"base model {Path(model).name}" if model else "base model", "/serving")
    return out


# -- trajectories, rewards, datasets -------------------------------------------------------------


@page("trajectories", "/trajectories", title="Trajectories")
def trajectory_list(db: Database, settings: Settings, params: Params) -> dict[str, Any]:
    f = trajectories.TrajectoryFilter.parse(dict(params.query))
    with db.read_session() as s:
        return {
            "f": f,
            "result": trajectories.search_trajectories(s, f),
            "options": trajectories.filter_options(s),
        }


@page("trajectory", "/trajectories/{key:path}", section="trajectories")
def trajectory(db: Database, settings: Settings, params: Params) -> dict[str, Any]:
    with db.read_session() as s:
        t = trajectories.trajectory_detail(s, params.key or "")
        known = queries.version_ids(s)
    if t is None:
        raise NotFound(f"No trajectory {params.key!r}.")
    return {"t": t, "known_versions": known}


@page("rewards", "/rewards", title="Rewards", live=True)
def reward_page(db: Database, settings: Settings, params: Params) -> dict[str, Any]:
    days = params.integer("days", 30, lo=1, hi=36500)
    with db.read_session() as s:
        data = rewards.reward_overview(s, utcnow() - dt.timedelta(days=days))
    edges = data["edges"]
    labels = [f"{(edges[i] + edges[i + 1]) / 2:.2g}" for i in range(len(edges) - 1)] if edges else []
    hist = {
        "type": "bars",
        "x": labels,
        "stacked": True,
        "x_label": "score (bucket middle)",
        "y_label": "scores",
        "series": [
            {"name": sc, "points": list(zip(labels, counts))}
            for sc, counts in sorted(data["histograms"].items())
        ],
    }
    by_day = {
        "type": "line",
        "x_is_date": True,
        "x_label": "day (UTC)",
        "y_label": "mean score",
        "series": [{"name": "mean score", "points": [[r["key"], r["mean"]] for r in data["by_day"]]}],
    }
    n = sum(r["count"] for r in data["by_scenario"])
    share = sum(r["count"] * (r["share_negative"] or 0) for r in data["by_scenario"]) / n if n else None
    return {"data": data, "hist": hist, "by_day_chart": by_day, "days": days, "share_negative": share}


@page("datasets", "/datasets", title="Datasets", live=True)
def dataset_list(db: Database, settings: Settings, params: Params) -> dict[str, Any]:
    from learnloop.datasets import list_datasets

    with db.read_session() as s:
        return {"datasets": [_dataset(d.as_dict()) for d in list_datasets(s, limit=100)]}


@page("dataset", "/datasets/{key}", section="datasets")
def dataset(db: Database, settings: Settings, params: Params) -> dict[str, Any]:
    from learnloop.datasets import get_dataset

    dataset_id = params.row_id("dataset_id")
    with db.read_session() as s:
        return {
            "ds": _dataset(get_dataset(s, dataset_id).as_dict()),
            "versions": queries.versions(s, dataset_id=dataset_id),
        }


def _dataset(ds: dict[str, Any]) -> dict[str, Any]:
    """A dataset with its build report's parts as the templates read them, whatever the report holds
    (the stats are free JSON: a part a builder did not write reads as empty)."""
    stats = ds.get("stats") or {}
    rejected = stats.get("rejected") if isinstance(stats.get("rejected"), dict) else {}
    ds["report"] = {
        "length": _mapping(stats.get("length")),
        "rewards": _mapping(stats.get("rewards")),
        "funnel": _mapping(stats.get("funnel")),
        "duplicates": _mapping(stats.get("duplicates")),
        "rejected_count": rejected.get("count", 0),
        "rejected_by_reason": _mapping(rejected.get("by_reason")),
        "rejected": [r for r in rejected.get("items") or [] if isinstance(r, dict)],
    }
    return ds


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# -- jobs ----------------------------------------------------------------------------------------


@page("jobs", "/jobs", title="Jobs", live=True)
def jobs(db: Database, settings: Settings, params: Params) -> dict[str, Any]:
    offset = params.integer("offset", 0)
    with db.read_session() as s:
        return {
            "queue": queries.queue_summary(s),
            "active": queries.active_jobs(s),
            "queued": queries.queued_jobs(s, 50),
            "recent": queries.list_jobs(s, limit=50, offset=offset),
            "offset": offset,
        }


@page("job", "/jobs/{key}", section="jobs", live=True)
def job(db: Database, settings: Settings, params: Params) -> dict[str, Any]:
    job_id = params.row_id("job_id")
    with db.read_session() as s:
        found = queries.get_job(s, job_id)
        if found is None:
            raise NotFound(f"No job {job_id}.")
        series = queries.metric_series(s, job_id)
        events = queries.job_events(s, job_id, limit=20)
        versions = queries.versions(s, job_id=job_id)
        known = queries.version_ids(s)
    pts = series["points"]
    return {
        "job": found,
        "series": series,
        "job_events": events,
        "versions": versions,
        "known_versions": known,
        "loss_chart": {
            "type": "line",
            "x_label": "training step",
            "y_label": "loss",
            "empty": "No training steps recorded yet: they appear as the run reports them.",
            "series": [{"name": "loss", "points": [[p["step"], p["loss"]] for p in pts]}],
        },
        "lr_chart": {
            "type": "line",
            "x_label": "training step",
            "y_label": "learning rate",
            "empty": "No training steps recorded yet: they appear as the run reports them.",
            "series": [
                {"name": "learning rate", "color": "#d97706", "points": [[p["step"], p["lr"]] for p in pts]}
            ],
        },
    }


# -- versions, serving, quality ------------------------------------------------------------------


@page("versions", "/versions", title="Versions", live=True)
def versions(db: Database, settings: Settings, params: Params) -> dict[str, Any]:
    with db.read_session() as s:
        rows = queries.versions(s, limit=200)
        evaluations = queries.list_evaluations(s, limit=200)
        serving = queries.serving(s)
        history = queries.alias_events(s, limit=30)
        known = queries.version_ids(s)
    by_id = {v["id"]: v for v in rows}
    # Lineage: each version under its parent, depth-first, newest branches first.
    children: dict[str | None, list[dict[str, Any]]] = {}
    for v in rows:
        parent = v["parent_id"] if v["parent_id"] in by_id else None
        children.setdefault(parent, []).append(v)
    ordered: list[dict[str, Any]] = []

    def walk(parent: str | None, depth: int) -> None:
        # A straight chain (one child each) stays at one indent: only branches indent further.
        kids = children.get(parent, [])
        for v in kids:
            ordered.append({**v, "depth": min(depth, 6)})
            walk(v["id"], depth + 1 if len(kids) > 1 or depth == 0 else depth)

    walk(None, 0)
    return {
        "versions": ordered,
        "evaluations": eval_table.rows(evaluations[:50]),
        "eval_columns": eval_table.COLUMNS,
        "serving": serving,
        "serving_ids": {a["version_id"] for a in serving},
        "state_help": VERSION_STATES,
        "history": history,
        "known_versions": known,
    }


def _overall(metrics: dict[str, Any]) -> dict[str, Any]:
    overall = metrics.get("overall")
    return overall if isinstance(overall, dict) else metrics


@page("version", "/versions/{key}", section="versions")
def version(db: Database, settings: Settings, params: Params) -> dict[str, Any]:
    """One version: what it is, where it came from (lineage up its parents), how it was judged, its
    files on disk, and every alias move that involved it."""
    from learnloop.registry import get_version, lineage

    v = get_version(db, params.key or "").as_dict()
    chain = lineage(db, v["id"])
    parents = []
    node = chain.get("parent")
    while node:
        parents.append(node["version"])
        node = node.get("parent")
    with db.read_session() as s:
        evaluations = queries.list_evaluations(s, limit=100, candidate_ids=[v["id"]])
        serving = [a for a in queries.serving(s) if v["id"] in (a["version_id"], a["candidate"])]
        children = queries.child_versions(s, v["id"])
        known = queries.version_ids(s)
    return {
        "known_versions": known,
        "v": v,
        "chain": chain,
        "parents": parents,
        "children": children,
        "evaluations": eval_table.rows(evaluations),
        "eval_columns": eval_table.COLUMNS,
        "serving": serving,
        "files": _files(v),
        "moves": chain["promotions"],
    }


def _files(v: dict[str, Any]) -> list[dict[str, Any]]:
    """The version's recorded files with their size on disk (None: the file is gone)."""
    folder = Path(v["artifact_path"]) if v.get("artifact_path") else None
    out = []
    for name, digest in sorted((v.get("files") or {}).items()):
        path = folder / name if folder is not None else None
        size = path.stat().st_size if path is not None and path.is_file() else None
        out.append({"name": name, "sha256": digest, "size": size})
    return out


@page("serving", "/serving", title="Serving", live=True)
def serving(db: Database, settings: Settings, params: Params) -> dict[str, Any]:
    from learnloop.watch.metrics import serving_snapshot

    since = utcnow() - dt.timedelta(days=14)
    with db.read_session() as s:
        traffic = queries.served_traffic(s, since)
        aliases = queries.serving(s)
        known = queries.version_ids(s)
    days = sorted({r["day"] for r in traffic["per_day"]})
    counts = {(r["day"], r["version"]): r["requests"] for r in traffic["per_day"]}
    series = [
        {"name": v, "points": [[d, counts.get((d, v), 0)] for d in days]}
        for v in sorted({r["version"] for r in traffic["per_day"]})
    ]
    from learnloop.daemon.canary import status as canary_status
    from learnloop.store.traffic import summary as traffic_summary

    with db.read_session() as s:
        targets = traffic_summary(s, utcnow())
    captured = {r["version"]: r["latency_ms_mean"] for r in traffic["per_version"]}
    process = serving_snapshot()
    for row in process:
        # Counters of a process that has not timed an answer yet: the captured answers' mean instead.
        if row.get("latency_mean_s") is None and captured.get(row["version"]) is not None:
            row["latency_mean_s"] = captured[row["version"]] / 1000
    return {
        "aliases": aliases,
        "traffic": traffic,
        "chart": {
            "type": "bars",
            "x": days,
            "series": series,
            "x_label": "day (UTC)",
            "y_label": "requests",
            "empty": "No served requests in the last 14 days: point your app's OpenAI client at this "
            "server's /v1 (model 'learnloop') and its answers are counted here.",
        },
        "process": process,
        "known_versions": known,
        # Every target's share (an upstream's answers included, kept or sampled out) and the cost saved.
        "targets": targets,
        "canaries": canary_status(db, settings),
        "upstreams": [
            {"name": u.name, "model": u.model, "target": f"upstream:{u.name}"} for u in settings.upstreams
        ],
        "serving_off": params.server.get("serving_off") if params.server.get("serving") is False else None,
    }


@page("quality", "/quality", title="Quality", live=True)
def quality(db: Database, settings: Settings, params: Params) -> dict[str, Any]:
    since = utcnow() - dt.timedelta(days=60)
    with db.read_session() as s:
        live = queries.live_reward_by_day(s, since, settings.scoring)
        evaluations = queries.list_evaluations(s, limit=200)
        moves = [m for m in queries.alias_events(s, limit=200, since=since) if m["action"] != "split"]
        known = queries.version_ids(s)
    series = [
        {
            "name": f"live reward · {v}",
            "points": [[r["day"], r["reward_mean"]] for r in live if r["version"] == v],
        }
        for v in sorted({r["version"] for r in live})
    ]
    # One scale: rewards only (an evaluation's example count is not a reward, so it is not drawn here).
    eval_series = [
        {
            "name": f"evaluated reward · {side}",
            "dashed": True,
            "points": [
                [e["created_at"][:10], _overall(e["metrics"]).get(f"reward_{side}")]
                for e in reversed(evaluations)
                if isinstance(_overall(e["metrics"]).get(f"reward_{side}"), (int, float))
            ],
        }
        for side in ("candidate", "baseline")
    ]
    markers = [
        {"x": m["at"][:10], "label": f"{m['action']} {m['to'] or 'base'}", "kind": m["action"]} for m in moves
    ]
    return {
        "chart": {
            "type": "line",
            "x_is_date": True,
            "series": series + eval_series,
            "markers": markers,
            "x_label": "day (UTC)",
            "y_label": "mean reward",
            "empty": "No scored served traffic or evaluations yet: once your app's answers are scored "
            "(feedback, heuristics, rewards) their daily mean appears here.",
        },
        "live": live,
        "moves": moves,
        "evaluations": evaluations[:20],
        "known_versions": known,
    }
