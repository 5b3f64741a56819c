"""`learnloop status` and `learnloop alerts`: the dashboard's view and the alert rules, from the terminal."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import click

from learnloop.cli.main import echo_json, settings


def _secs(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(s)
    return (
        f"{s // 3600}h{s % 3600 // 60:02d}m"
        if s >= 3600
        else f"{s // 60}m{s % 60:02d}s"
        if s >= 60
        else f"{s}s"
    )


def render_status(status: dict[str, Any]) -> Any:
    """A rich renderable of the status (tables for loops, queue, running jobs,
    serving, trajectories, host)."""
    from rich.console import Group
    from rich.table import Table

    from learnloop.watch import human_bytes

    parts: list[Any] = []
    host = status["host"]
    db = host["database"]
    h = Table(title="host", show_header=False, title_justify="left")
    h.add_column(style="bold")
    h.add_column()
    h.add_row(
        "database",
        f"[green]reachable[/] {db['dialect']} {db['latency_ms']} ms, schema {db['revision']}"
        + ("" if db["at_head"] else " [yellow](not at head)[/]")
        if db["reachable"]
        else f"[red]unreachable[/] {db.get('error')}",
    )
    disk = host["disk"]
    h.add_row(
        "disk",
        f"{'[green]' if disk['ok'] else '[red]'}{human_bytes(disk['free_bytes'])} free[/] of "
        f"{human_bytes(disk['total_bytes'])} ({disk['path']})",
    )
    mem = host["memory"]
    used, available = human_bytes(mem["used_bytes"]), human_bytes(mem["available_bytes"])
    h.add_row("memory", f"{used} used, {available} available")
    for p in host["processes"]:
        h.add_row(f"{p['role']} pid {p['pid']}", f"{human_bytes(p['rss_bytes'])} RSS")
    for g in host["gpus"]:
        h.add_row(
            f"gpu {g['index']}",
            f"{g['name']}: {human_bytes(g['memory_used_bytes'])}/{human_bytes(g['memory_total_bytes'])}, "
            f"{g['utilization_pct']}%",
        )
    if not db["reachable"]:
        return h

    loops = Table(title="loops", title_justify="left")
    for col in ("loop", "state", "head", "next check", "readiness"):
        loops.add_column(col)
    for lp in status["loops"]:
        loops.add_row(
            lp["name"],
            lp["state"],
            lp["head_version"] or "base",
            _secs(lp["next_check_in_s"]),
            "; ".join(lp["readiness_reasons"]) or ("ready" if lp["ready"] else "–"),
        )
    if not status["loops"]:
        loops.add_row("(none yet)", "", "", "", "")
    parts.append(loops)

    jobs = Table(title="jobs", title_justify="left")
    from learnloop.watch import job_stage

    for col in ("job", "kind", "state", "stage", "loss", "tok/s", "ETA"):
        jobs.add_column(col)
    for j in status["running"]:
        jobs.add_row(
            str(j["id"]),
            j["kind"],
            j["state"] + ("" if j["desired_state"] == "run" else f" → {j['desired_state']}"),
            job_stage(j),
            f"{j['loss']:.4g}" if j["loss"] is not None else "–",
            f"{j['tokens_per_s']:.0f}" if j["tokens_per_s"] is not None else "–",
            _secs(j["eta_s"]),
        )
    q = status["queue"]["by_state"]
    jobs.caption = (
        " · ".join(f"{k} {v}" for k, v in q.items())
        + " · by priority: "
        + (
            ", ".join(
                f"p{p['priority']}: " + " ".join(f"{v} {k}" for k, v in p.items() if k != "priority")
                for p in status["queue"]["by_priority"]
            )
            or "–"
        )
    )
    parts.append(jobs)

    srv = Table(title="serving", title_justify="left")
    for col in ("alias", "version", "candidate", "split"):
        srv.add_column(col)
    for a in status["serving"]:
        srv.add_row(a["alias"], a["version"], a["candidate"] or "–", f"{a['split'] * 100:.0f}%")
    if not status["serving"]:
        srv.add_row("learnloop", "base", "–", "–")
    ev = status["last_evaluation"]
    srv.caption = (
        f"last evaluation: {ev['candidate_id']} vs {ev['baseline_id']}: {ev['verdict']}"
        if ev
        else "no evaluation yet"
    )
    parts.append(srv)
    if status.get("traffic"):
        parts.append(_traffic_table(status["traffic"], status.get("canaries") or []))

    t = status["trajectories"]
    tr = Table(title="trajectories", title_justify="left")
    for col in ("source", "today", "total"):
        tr.add_column(col)
    for source, c in t["by_source"].items():
        tr.add_row(source, str(c["today"]), str(c["total"]))
    tr.add_row("[bold]all", f"[bold]{t['today']}", f"[bold]{t['total']}")
    parts.append(tr)
    parts.append(h)
    return Group(*parts)


def _traffic_table(traffic: list[dict[str, Any]], canaries: list[dict[str, Any]]) -> Any:
    """Each alias's share of requests per target (last hour, all time) and the cost saved so far."""
    from rich.table import Table

    tb = Table(title="traffic", title_justify="left")
    for col in ("alias", "target", "last hour", "all time", "cost so far"):
        tb.add_column(col)
    captions = []
    for a in traffic:
        for t in a["targets"]:
            tb.add_row(
                a["alias"] or "(named directly)",
                t["target"],
                f"{t['share']:.0%} of {sum(x['requests'] for x in a['targets'])}",
                f"{t['share_all_time']:.0%} ({t['requests_all_time']})",
                f"{t['cost_all_time']:.4g}",
            )
        if a.get("cost_saved") is not None:
            captions.append(
                f"{a['alias']}: saved {a['cost_saved']:.4g} on {a['own_requests']} requests answered by "
                f"its own models (upstream: {a['teacher_cost_per_1k_requests']:.4g} per 1,000 requests)"
            )
    for c in canaries:
        captions.append(f"canary {c['alias']}: {c['candidate']} at {c['share']:.0%} - {c['reason']}")
    tb.caption = "\n".join(captions) or None
    return tb


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the same JSON as GET /v1/status.")
@click.option("--watch", "watch", is_flag=True, help="Refresh until interrupted.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
def status_cmd(as_json: bool, watch: bool, interval: float) -> None:
    """The whole loop at a glance: loops, queue, running job, serving version, last evaluation,
    trajectories, host health."""
    from learnloop.store.db import Database
    from learnloop.watch import build_status

    s = settings()
    # No migration here: status must also work (and say so) when the database is down or behind.
    db = Database(s.resolved_database_url)
    from rich.console import Console

    console = Console()
    if not watch:
        status = build_status(db, s, self_role="cli")
        echo_json(status) if as_json else console.print(render_status(status))
        if not status["host"]["database"]["reachable"]:
            raise SystemExit(1)
        return
    # Ctrl-C is the only way out of --watch, so SIGINT must raise KeyboardInterrupt here even when
    # this process started with it ignored: a background job of a non-interactive shell (`cmd &` in a
    # script, a CI runner) inherits SIGINT as ignored, and Python then leaves it ignored for good.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler) if main_thread else None
    try:
        if as_json or not console.is_terminal:
            # Not a terminal (a log, a pipe): one full status per interval, one after another.
            while True:
                status = build_status(db, s, self_role="cli")
                echo_json(status) if as_json else console.print(render_status(status))
                console.file.flush()
                time.sleep(interval)
        from rich.live import Live

        with Live(
            render_status(build_status(db, s, self_role="cli")), console=console, refresh_per_second=4
        ) as live:
            while True:
                time.sleep(interval)
                live.update(render_status(build_status(db, s, self_role="cli")))
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


@click.group("alerts")
def alerts_group() -> None:
    """Alert rules ([[alerts]] in learnloop.toml) and their webhooks."""


@alerts_group.command("test")
@click.option(
    "--rule", "rule_name", default=None, help="Only this rule's webhook (default: every configured rule)."
)
@click.option("--url", default=None, help="Send to this webhook instead of the configured ones.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def alerts_test(rule_name: str | None, url: str | None, as_json: bool) -> None:
    """Send a test alert; exits 1 if any webhook did not accept it."""
    from learnloop.store.db import Database
    from learnloop.watch import send_test

    s = settings()
    try:
        db: Database | None = Database(s.resolved_database_url)
        db.upgrade()
    except Exception:  # noqa: BLE001 - a test alert must go out even when the database is down
        db = None
    results = send_test(db, s, rule_name=rule_name, url=url)
    if as_json:
        echo_json(results)
    else:
        for r in results:
            click.echo(
                f"{r['rule']}: {'sent' if r['ok'] else 'FAILED'} -> {r['url']}"
                + (f" ({r['error']})" if r["error"] else "")
            )
    if not all(r["ok"] for r in results):
        raise SystemExit(1)


@alerts_group.command("check")
def alerts_check() -> None:
    """Evaluate the rules once and send what is due (what the server does every watch.alert_interval_s)."""
    from learnloop.store.db import open_database
    from learnloop.watch import run_once

    s = settings()
    result = run_once(open_database(s), s)
    click.echo(
        f"{len(result['new'])} new alert(s); sent {result['sent']}, retrying {result['retry']}, "
        f"failed {result['failed']}"
    )


@alerts_group.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
def alerts_list(limit: int) -> None:
    """The newest alert deliveries and their state."""
    import datetime as dt

    from learnloop.store.db import open_database
    from learnloop.watch import recent_deliveries

    rows = recent_deliveries(open_database(settings()), limit)
    for r in rows:
        click.echo(
            f"{dt.datetime.fromisoformat(r['created_at']):%Y-%m-%d %H:%M} {r['state']:8} {r['rule']}: "
            f"{r['title']} (attempts {r['attempts']})" + (f" — {r['error']}" if r["error"] else "")
        )
    if not rows:
        click.echo("no alerts yet")
