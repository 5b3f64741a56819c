"""`learnloop rewards ...`: apply heuristics and feedback, run the LLM judge, show reward statistics."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from learnloop.cli.main import echo_json, settings


@click.group("rewards")
def rewards_group() -> None:
    """Score trajectories (heuristics, feedback, LLM judge) and inspect rewards."""


@rewards_group.command("apply")
@click.option("--only", "names", multiple=True, help="Run only this reward function (repeatable).")
@click.option(
    "--module",
    "modules",
    multiple=True,
    help="Import this module (dotted name or .py file) first so its @reward functions register (repeatable).",
)
@click.option("--no-feedback", is_flag=True, help="Skip converting feedback into `feedback` scores.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def apply_cmd(names: tuple[str, ...], modules: tuple[str, ...], no_feedback: bool, as_json: bool) -> None:
    """Run heuristic rewards and feedback conversion on trajectories not scored yet."""
    from learnloop.scoring import apply_rewards
    from learnloop.store import open_database

    s = settings()
    report = apply_rewards(
        open_database(s), s.scoring, names=list(names) or None, modules=modules, feedback=not no_feedback
    )
    if as_json:
        echo_json(report.as_dict())
        return
    h = report.heuristics
    click.echo(
        f"heuristics: {h.trajectories_seen} trajectories examined, {h.scored} scores stored, "
        f"{h.failed} failures"
    )
    for name, c in sorted(h.counts.items()):
        click.echo(
            f"  {name:<20} scored {c.scored:>7}  not applicable {c.not_applicable:>7}  failed {c.failed:>5}"
        )
    f = report.feedback
    click.echo(
        f"feedback: {f.scored} scores stored ({f.trajectories_with_feedback} trajectories with feedback, "
        f"{f.already_scored} already up to date, {f.no_signal} without a rating/thumbs/success/correction)"
    )
    click.echo(
        f"refinement across groups: {report.group_refinements} answers asked again in the next trajectory"
    )
    for e in h.errors[:20]:
        click.secho(
            f"error: {e.name} (v{e.version}) on trajectory {e.trajectory_id}: {e.error}", fg="red", err=True
        )
    if h.errors_total > 20:
        click.secho(
            f"... and {h.errors_total - 20} more errors (use --json to see up to 200)", fg="red", err=True
        )


@rewards_group.command("judge")
@click.option("--scenario", required=True, help="Scenario whose trajectories are judged against each other.")
@click.option(
    "--max-groups", type=click.IntRange(min=1), default=None, help="Judge at most this many groups."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def judge_cmd(scenario: str, max_groups: int | None, as_json: bool) -> None:
    """Score groups of one scenario's trajectories relative to each other with the configured LLM judge.

    Exits with status 1 when any group failed (it is retried on the next run).
    """
    from learnloop.scoring.judge import check_judge_configured, judge_scenario
    from learnloop.store import open_database

    s = settings()
    check_judge_configured(s.scoring)  # before touching the database
    report = judge_scenario(open_database(s), scenario, s.scoring, max_groups=max_groups)
    if as_json:
        echo_json(report.as_dict())
    else:
        click.echo(
            f"scenario {scenario!r} with {report.judge_model}: {report.groups_judged} groups judged, "
            f"{report.groups_cached} from cache, {len(report.failures)} failed, "
            f"{report.groups_skipped} too small to judge; {report.scores_stored} scores stored"
        )
        for f in report.failures:
            click.secho(f"failed group {', '.join(f.trajectory_ids)}: {f.error}", fg="red", err=True)
    if report.failures:
        click.get_current_context().exit(1)


@rewards_group.command("stats")
@click.option(
    "--days", type=click.IntRange(min=1), default=None, help="Only trajectories created in the last N days."
)
@click.option("--scenario", default=None, help="Only this scenario.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats_cmd(days: int | None, scenario: str | None, as_json: bool) -> None:
    """Reward distribution (mean, p10/p50/p90, share negative) per scenario, source and day."""
    from learnloop.scoring import reward_stats
    from learnloop.store import open_database

    s = settings()
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=days) if days else None
    with open_database(s).read_session() as session:
        data = reward_stats(session, weights=s.scoring, since=since, scenario=scenario)
    if as_json:
        echo_json(data)
        return
    _print_tables(data)


@rewards_group.command("list")
@click.option("--module", "modules", multiple=True, help="Import this module first (repeatable).")
def list_cmd(modules: tuple[str, ...]) -> None:
    """List the registered heuristic reward functions."""
    from learnloop.scoring import load_modules, registered

    load_modules([*settings().scoring.reward_modules, *modules])
    for fn in registered():
        click.echo(f"{fn.name:<20} v{fn.version:<6} {fn.description}")


def _print_tables(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not data["overall"]["count"]:
        console.print("no scored trajectories yet (run `learnloop rewards apply`)")
        return
    sections = {"overall": [{"": "all", **data["overall"]}]} | {
        k: v for k, v in data.items() if k != "overall"
    }
    for section, rows in sections.items():
        if not rows:
            continue
        table = Table(title=section.replace("_", " "))
        for col in rows[0]:
            table.add_column(
                col,
                justify="left"
                if col in ("", "scenario", "source", "day", "score_source", "aspect")
                else "right",
            )
        for row in rows:
            table.add_row(*(_fmt(v) for v in row.values()))
        console.print(table)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)
