"""`learnloop demo`: watch the loop make a real model better, unattended."""

from __future__ import annotations

import socket
from pathlib import Path

import click


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@click.command("demo")
@click.option(
    "--quick", is_flag=True, help="The same flow on the tiny offline test model, in about a minute."
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
    type=float,
    default=None,
    help="Minutes the loop may take to promote a better model before the demo gives up "
    "(default: 15, or 1 with --quick).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON.")
def demo_cmd(quick: bool, data_dir: Path, port: int | None, budget: float | None, as_json: bool) -> None:
    """Start a server and daemon on a fresh SQLite data dir, run a simulated app against the `learnloop`
    alias, and let the daemon train, evaluate, promote and hot-swap a better model while it runs.

    The task: turn a customer's order message into JSON. The base model gets it wrong; a rule-based
    teacher's answers (15% of traffic plus the confident ones, and a backfill in the inbox) teach it.
    """
    import dataclasses
    import json

    from rich.console import Console

    from learnloop.demo.profiles import PROFILES
    from learnloop.demo.runner import DemoRun

    console = Console(stderr=as_json)
    profile = PROFILES["quick" if quick else "full"]
    if budget is not None:
        profile = dataclasses.replace(profile, budget_s=budget * 60)
    run = DemoRun(profile, data_dir.resolve(), port=port or _free_port(), console=console)
    report = run.run()
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    _print_report(console, report)


def _print_report(console: object, report: dict) -> None:
    from rich.table import Table

    def fmt(r: dict) -> str:
        if not r.get("n"):
            return "-"
        lo, hi = r["ci95"]
        return f"{r['successes']}/{r['n']} = {r['rate']:.0%} (95% CI {lo:.0%} .. {hi:.0%})"

    table = Table(title="learnloop demo: the report", show_header=False)
    table.add_column(style="bold cyan")
    table.add_column()
    table.add_row("model prepared in", f"{report['prepare_s']} s (not counted below)")
    table.add_row("demo took", f"{report['demo_s']} s")
    table.add_row("success before (base)", fmt(report["before"]))
    table.add_row(f"success after ({report['promoted']})", fmt(report["after"]))
    table.add_row("plot", report["plot"])
    console.print(table)  # type: ignore[attr-defined]
    timeline = Table(title="timeline")
    timeline.add_column("t")
    timeline.add_column("what happened")
    for row in report["timeline"]:
        timeline.add_row(f"{row['t_s']} s", row["what"])
    console.print(timeline)  # type: ignore[attr-defined]
    if report.get("lineage"):
        console.print_json(data=report["lineage"])  # type: ignore[attr-defined]
