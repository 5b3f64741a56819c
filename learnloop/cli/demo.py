"""`learnloop demo`: watch the loop make a real model better, unattended."""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from types import FrameType

import click


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@click.command("demo")
@click.option(
    "--quick", is_flag=True, help="The same flow on the tiny offline test model, in under a minute."
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("learnloop-demo"),
    show_default=True,
    help="The demo's own data dir; emptied at the start (prepared models are kept).",
)
@click.option("--port", type=int, default=None, help="Port of the demo's server (default: a free one).")
@click.option(
    "--budget",
    type=click.FloatRange(min=0),
    default=None,
    help="Minutes the loop should take, once the model is prepared, until the trained model serves "
    "every user; the report says whether it was met or by how much it was missed "
    "(default: 15, or 2 with --quick; without a teacher 30, or 5 with --quick).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Fail the demo as soon as the budget is passed (without it a slow machine only makes the "
    "report say the budget was missed).",
)
@click.option(
    "--no-teacher",
    is_flag=True,
    help="No teacher and no backfill: the app's traffic on the base model and its verifier (@reward) only; "
    "the loop trains by rejection sampling over the served prompts.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON.")
def demo_cmd(
    quick: bool,
    data_dir: Path,
    port: int | None,
    budget: float | None,
    strict: bool,
    no_teacher: bool,
    as_json: bool,
) -> None:
    """Start a teacher, a server and a daemon on a fresh SQLite data dir, and run a simulated app against
    the `learnloop` alias, which starts on the teacher (an upstream) and ends on a model trained here.

    The task: turn a customer's order message into JSON. The base model gets it wrong; the teacher's
    answers, served through learnloop (15% of them plus the confident ones are kept, and a backfill in
    the inbox), teach it; the gate checks it against the teacher and a canary moves the users over.
    """
    import dataclasses
    import json

    from rich.console import Console

    from learnloop.demo.profiles import PROFILES
    from learnloop.demo.runner import DemoRun

    console = Console(stderr=as_json)
    profile = PROFILES[("quick" if quick else "full") + ("-no-teacher" if no_teacher else "")]
    if budget is not None:
        profile = dataclasses.replace(profile, budget_s=budget * 60)
    run = DemoRun(profile, data_dir.resolve(), port=port or _free_port(), console=console, strict=strict)
    # SIGTERM (`kill`, a supervisor, a CI runner's timeout) ends the demo as Ctrl-C does: on the way
    # out it stops its server and teacher, which would otherwise serve on with nobody to stop them.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    report = run.run()
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    _print_report(console, report)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _print_report(console: object, report: dict) -> None:
    from rich.table import Table

    def fmt(r: dict) -> str:
        if not r.get("n"):
            return "-"
        lo, hi = r["ci95"]
        return f"{r['successes']}/{r['n']} = {r['rate']:.0%} (95% CI {lo:.0%} .. {hi:.0%})"

    def num(x: object, fmt: str = ".4g") -> str:
        return "-" if x is None else format(x, fmt)

    table = Table(title="learnloop demo: the report", show_header=False)
    table.add_column(style="bold cyan")
    table.add_column()
    table.add_row("model prepared in", f"{report['prepare_s']} s (not counted below)")
    table.add_row("demo took", f"{report['demo_s']} s")
    budget = report.get("budget") or {}
    table.add_row(
        "time budget",
        ("met: " if budget.get("met") else "missed: ") + str(budget.get("line", "-")),
    )
    if not report.get("teacher", True):
        table.add_row("teacher", "none: only the verifier `order_json` (registered with @reward)")
    table.add_row("algorithm", str(report.get("algorithm")))
    for c in report.get("cycles") or []:
        if "error" in c and "job_id" not in c:
            table.add_row("cycles", f"not read: {c['error']}")
            continue
        table.add_row(
            f"cycle {c.get('cycle')} (job {c.get('job_id')})",
            f"{c.get('state')}: {c.get('examples')} examples, {c.get('steps')} steps, {c.get('seconds')} s; "
            f"gate {c.get('gate') or '-'}"
            + ("; promoted" if c.get("promoted") else "")
            + (f"; {str(c['error'])[:120]}" if c.get("error") else ""),
        )
    table.add_row("success before (base, asked by name)", fmt(report["before"]))
    table.add_row(f"success after ({report['promoted']}, through `learnloop`)", fmt(report["after"]))
    gate = report.get("gate")
    if gate:
        ci = gate.get("reward_diff_ci") or [None, None]
        table.add_row(
            f"gate vs {gate['baseline']}",
            f"reward diff {num(gate['reward_diff'], '+.3f')} (95% CI {num(ci[0], '+.3f')} .. "
            f"{num(ci[1], '+.3f')}) over {gate['n']} held-out cases",
        )
        table.add_row(
            "latency p50 / p95 (student | teacher)",
            f"{num(gate['latency_p50_candidate'], '.0f')} / {num(gate['latency_p95_candidate'], '.0f')} ms | "
            f"{num(gate['latency_p50_baseline'], '.0f')} / {num(gate['latency_p95_baseline'], '.0f')} ms",
        )
        table.add_row(
            "cost per 1,000 requests (student | teacher)",
            f"${num(gate['cost_per_1k_requests_candidate'])} | ${num(gate['cost_per_1k_requests_baseline'])}",
        )
    cost = report.get("cost") or {}
    if cost.get("cost_saved") is not None:
        table.add_row(
            "cost saved so far",
            f"${cost['cost_saved']:.4f} on {cost['own_requests']} requests the student answered "
            f"(the teacher: ${num(cost['teacher_cost_per_1k_requests'])} per 1,000; {cost['note']})",
        )
    table.add_row("plot", report["plot"])
    console.print(table)  # type: ignore[attr-defined]
    shares = Table(title="the app's requests per target over time")
    for col in ("t", "requests", "teacher", "student"):
        shares.add_column(col)
    for row in report.get("share_over_time") or []:
        shares.add_row(
            f"{row['t_s']:.0f} s",
            str(row["requests"]),
            f"{row['teacher_share']:.0%}",
            f"{row['student_share']:.0%}",
        )
    console.print(shares)  # type: ignore[attr-defined]
    timeline = Table(title="timeline")
    timeline.add_column("t")
    timeline.add_column("what happened")
    for row in report["timeline"]:
        timeline.add_row(f"{row['t_s']} s", row["what"])
    console.print(timeline)  # type: ignore[attr-defined]
    if report.get("lineage"):
        console.print_json(data=report["lineage"])  # type: ignore[attr-defined]
