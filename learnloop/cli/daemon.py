"""`learnloop daemon`, `learnloop jobs`, `learnloop loops`: run the loop unattended and steer it."""

from __future__ import annotations

import json
from typing import Any

import click

from learnloop.cli.main import echo_json, settings


def _db() -> Any:
    from learnloop.daemon.log import configure_log
    from learnloop.paths import data_dir
    from learnloop.store import open_database

    s = settings()
    configure_log(data_dir(s.data_dir).logs)  # a person's actions go to the same daily log as the daemon's
    return s, open_database(s)


# -- daemon ------------------------------------------------------------------------------------------


@click.group("daemon", invoke_without_command=True)
@click.option("--no-scoring", is_flag=True, help="Do not score new trajectories in the background.")
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="'json': one JSON object a line. [default: server.log_format, text]",
)
@click.pass_context
def daemon_group(ctx: click.Context, no_scoring: bool, log_level: str, log_format: str | None) -> None:
    """Run the daemon in the foreground (no subcommand), or pause/resume/freeze/unfreeze every daemon.

    It scores new trajectories, checks each [[loops]] entry's triggers, runs the queued jobs (training as a
    supervised subprocess) and recovers jobs whose daemon died. SIGTERM or Ctrl-C stops it within one
    training step (the run checkpoints and is requeued).
    """
    if ctx.invoked_subcommand is not None:
        return
    from learnloop.cli.logs import configure_logging
    from learnloop.daemon.service import Daemon

    configure_logging(log_level, log_format or settings().server.log_format)
    s, db = _db()
    daemon = Daemon(s, db, scoring=not no_scoring)
    click.echo(
        f"learnloop daemon {daemon.owner}: {len(s.loops)} loop(s), database "
        f"{s.public_dict()['database_url']}",
        err=True,
    )
    try:
        daemon.run()
    finally:
        db.dispose()


def _switch(key: str, on: bool, done: str) -> None:
    from learnloop.daemon.queue import set_control

    _, db = _db()
    changed = set_control(db, key, on, actor="cli")
    click.echo(done if changed else f"{done} (it already was)")


@daemon_group.command("pause")
def daemon_pause() -> None:
    """Stop taking new jobs (running ones go on; `learnloop jobs pause ID` pauses one)."""
    _switch("daemon.paused", True, "daemons paused: no new jobs are taken")


@daemon_group.command("resume")
def daemon_resume() -> None:
    """Take new jobs again."""
    _switch("daemon.paused", False, "daemons resumed")


@daemon_group.command("freeze")
def daemon_freeze() -> None:
    """Stop every automatic promotion (training and evaluation go on)."""
    _switch("daemon.frozen", True, "frozen: no automatic promotion")


@daemon_group.command("unfreeze")
def daemon_unfreeze() -> None:
    """Allow automatic promotions again."""
    _switch("daemon.frozen", False, "unfrozen: automatic promotions allowed")


@daemon_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def daemon_status(as_json: bool) -> None:
    """The daemon switches and the jobs running now."""
    from learnloop.daemon import queue

    _, db = _db()
    data = {
        "paused": queue.get_control(db, "daemon.paused"),
        "frozen": queue.get_control(db, "daemon.frozen"),
        "running": [j.as_dict(brief=True) for j in queue.list_jobs(db, state="running")],
    }
    if as_json:
        echo_json(data)
        return
    click.echo(f"paused: {data['paused']}  frozen: {data['frozen']}")
    for j in data["running"]:
        click.echo(
            f"job {j['id']} ({j['kind']}, loop {j['loop']}) on {j['lease_owner']}: {_progress(j['progress'])}"
        )


# -- jobs --------------------------------------------------------------------------------------------


@click.group("jobs")
def jobs_group() -> None:
    """The job queue: list, show, submit, and pause/resume/stop/skip/cancel/retry a job."""


def _progress(p: dict[str, Any]) -> str:
    if not p or "step" not in p:
        return ""
    parts = [f"step {p.get('step')}/{p.get('total_steps')}"]
    if p.get("stage") and p["stage"] != "training":  # training is over: the cycle is in a later stage
        from learnloop.daemon.queue import STAGES

        done = f" {p['stage_done']}/{p['stage_total']}" if p.get("stage_total") else ""
        return f"{STAGES.get(p['stage'], p['stage'])}{done} (trained {parts[0]})"
    if p.get("loss") is not None:
        parts.append(f"loss {p['loss']:.4f}")
    if p.get("tokens_per_s"):
        parts.append(f"{p['tokens_per_s']:.0f} tok/s")
    if p.get("eta_s") is not None:
        parts.append(f"eta {p['eta_s']:.0f}s")
    return ", ".join(parts)


@jobs_group.command("list")
@click.option(
    "--state", type=click.Choice(["queued", "running", "paused", "succeeded", "failed", "cancelled"])
)
@click.option("--loop", help="Only this loop's jobs.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def jobs_list(state: str | None, loop: str | None, limit: int, as_json: bool) -> None:
    """Jobs, newest first."""
    from rich.console import Console
    from rich.table import Table

    from learnloop.daemon import queue

    _, db = _db()
    rows = queue.list_jobs(db, state=state, loop=loop, limit=limit)
    if as_json:
        echo_json([r.as_dict(brief=True) for r in rows])
        return
    if not rows:
        click.echo("no jobs")
        return
    table = Table(title="jobs")
    for col in ("id", "kind", "loop", "state", "priority", "attempts", "progress", "created", "error"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r.id),
            r.kind,
            r.loop or "",
            r.state + ("" if r.desired_state in ("run", "pause") else f" ({r.desired_state}ing)"),
            r.priority,
            f"{r.attempts}/{r.max_attempts}",
            _progress(r.progress),
            r.created_at.strftime("%m-%d %H:%M:%S"),
            (r.error or "").splitlines()[-1][:60] if r.error else "",
        )
    Console().print(table)


@jobs_group.command("show")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def jobs_show(job_id: int, as_json: bool) -> None:
    """One job: state, progress, result, error and the last lines of a failed run's output."""
    from learnloop.daemon import queue

    _, db = _db()
    job = queue.get_job(db, job_id)
    data = job.as_dict()
    if as_json:
        echo_json(data)
        return
    for key, value in data.items():
        if key == "output_tail":
            continue
        if isinstance(value, dict):
            value = json.dumps(value, default=str)
        click.echo(f"{key}: {value}")
    if job.output_tail:
        click.echo("output (last lines):")
        click.echo(job.output_tail)


@jobs_group.command("submit")
@click.option("--loop", "loop_name", help="Queue a cycle of this [[loops]] entry (same as `loops run`).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Queue a plain training run of this TrainConfig (JSON, YAML or TOML).",
)
@click.option("--score", is_flag=True, help="Queue one scoring pass over unscored trajectories.")
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), default="normal", show_default=True)
@click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--key", "idempotency_key", help="Idempotency key: submitting the same key again returns the first job."
)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
def jobs_submit(
    loop_name: str | None,
    config_path: str | None,
    score: bool,
    priority: str,
    max_attempts: int,
    idempotency_key: str | None,
    as_json: bool,
) -> None:
    """Queue a job: a loop's cycle, a training run, or a scoring pass."""
    from learnloop.daemon import queue

    if sum(bool(x) for x in (loop_name, config_path, score)) != 1:
        raise click.UsageError("give exactly one of --loop, --config or --score")
    s, db = _db()
    if loop_name:
        from learnloop.daemon import loops

        _, job = loops.check_and_submit(db, s, loops.get_loop(s, loop_name), manual=True, actor="cli")
        created = True
    elif config_path:
        from learnloop.training.run import load_config

        cfg = load_config(config_path).model_dump(mode="json")
        job, created = queue.submit(
            db,
            "train",
            {"config": cfg},
            priority=priority,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
        )
    else:
        job, created = queue.submit(
            db, "score", {}, priority=priority, max_attempts=max_attempts, idempotency_key=idempotency_key
        )
    assert job is not None
    if as_json:
        echo_json({**job.as_dict(), "created": created})
        return
    click.echo(
        f"job {job.id} {'queued' if created else 'already queued with this key'} ({job.kind}, {job.priority})"
    )


def _action(name: str, help_text: str) -> None:
    @jobs_group.command(name, help=help_text)
    @click.argument("job_id", type=int)
    @click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
    def cmd(job_id: int, as_json: bool) -> None:
        from learnloop.daemon import queue

        _, db = _db()
        job = queue.control(db, job_id, name, actor="cli")
        if as_json:
            echo_json(job.as_dict(brief=True))
            return
        running = job.lease_owner is not None
        click.echo(
            f"job {job.id}: {name} "
            + ("requested; the run acts on it at its next step" if running else f"done; now {job.state}")
        )


_action("pause", "Pause a job (a running one at its next training step; it keeps its worker).")
_action("resume", "Resume a paused or stopped job.")
_action("stop", "Stop a running job at its next step (checkpoint kept); `jobs resume` continues it.")
_action("skip", "Stop the running job (checkpoint kept), requeue it behind the waiting jobs, and move on.")
_action("cancel", "Cancel a job for good (a running one stops at its next step).")
_action("retry", "Queue a failed or cancelled job again (it resumes from its newest checkpoint).")


# -- loops -------------------------------------------------------------------------------------------


@click.group("loops")
def loops_group() -> None:
    """The [[loops]] of learnloop.toml: their state and readiness, and running one now."""


@loops_group.command("status")
@click.option(
    "--check", is_flag=True, help="Recompute readiness now instead of showing the daemon's last check."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def loops_status(check: bool, as_json: bool) -> None:
    """Per loop: state, last check, next check, readiness with reasons, running job, last outcome."""
    from learnloop.daemon import loops

    s, db = _db()
    rows = loops.status(db, s)
    if check:
        fresh = {lp.name: loops.check_loop(db, s, lp) for lp in s.loops}
        for r in rows:
            d = fresh[r["name"]]
            r.update(
                ready=d.ready, reasons=d.reasons, would_fire=d.fire, next_cycle=d.plan, backoff=d.backoff
            )
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no loops configured: add a [[loops]] entry to learnloop.toml")
        return
    for r in rows:
        click.echo(
            f"{r['name']} ({r['algorithm']}): {r['state']}; last check {r['last_check_at'] or 'never'}, "
            f"next in {r['next_check_in_s']} s; head {r['head_version'] or 'base'}"
        )
        for reason in r["reasons"]:
            click.echo(f"  - {reason}")
        if r.get("next_cycle"):
            click.echo(f"  next cycle: {r['next_cycle']['summary']}")
        b = r.get("backoff")
        if b and not b.get("woken_by") and b.get("until"):
            click.echo(
                f"  backing off until {b['until']} (wait {b['wait_s']:.0f} s of at most {b['max_s']:.0f} s)"
            )
        if r["job"]:
            click.echo(f"  job {r['job']['id']} {r['job']['state']} {_progress(r['job']['progress'])}")
        if r["last_outcome"]:
            o = r["last_outcome"]
            click.echo(
                f"  last cycle: {o.get('outcome')} (job {o.get('job_id')}) "
                f"{o.get('reason') or o.get('version_id') or o.get('adapter_dir') or ''}"
            )
        if r["lock_error"]:
            click.echo(f"  refused: {r['lock_error']}")


@loops_group.command("run")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the queued job as JSON.")
def loops_run(name: str, as_json: bool) -> None:
    """Queue a cycle of loop NAME now, whatever its triggers say (a running daemon takes it)."""
    from learnloop.daemon import loops

    s, db = _db()
    _, job = loops.check_and_submit(db, s, loops.get_loop(s, name), manual=True, actor="cli")
    assert job is not None
    if as_json:
        echo_json(job.as_dict(brief=True))
        return
    click.echo(f"loop {name}: cycle {job.payload.get('cycle')} queued as job {job.id}")
