"""`learnloop datasets`: build, list, show and export training datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from learnloop.cli.main import echo_json, settings


@click.group("datasets")
def datasets_group() -> None:
    """Build SFT / DPO / GRPO / KTO / prompts / holdout datasets from scored trajectories; inspect them."""


@datasets_group.command("build")
@click.argument("kind", type=click.Choice(["sft", "dpo", "grpo", "kto", "prompts", "holdout"]))
@click.option("--lookback-hours", type=float, help="Only trajectories created in the last N hours.")
@click.option("--window", "window_id", help="Only trajectories of this capture window id.")
@click.option("--scenario", help="Only trajectories of this scenario.")
@click.option(
    "--agent", "agents", multiple=True, help="Only trajectories of this agent (repeatable: any of them)."
)
@click.option(
    "--min-agents",
    type=click.IntRange(min=1),
    help="Only windows (or groups) where at least N distinct agents acted.",
)
@click.option(
    "--agents-per",
    type=click.Choice(["window", "group"]),
    default="window",
    show_default=True,
    help="What --min-agents counts agents in.",
)
@click.option(
    "--source",
    "sources",
    multiple=True,
    type=click.Choice(["production", "teacher", "synthetic", "served"]),
    help="Only these sources (repeatable).",
)
@click.option(
    "--tag", "tags", multiple=True, help="Only trajectories carrying this tag (repeatable: all required)."
)
@click.option(
    "--min-reward", type=float, help="SFT/holdout: least combined reward; KTO: the desirable bar (0.5)."
)
@click.option(
    "--max-undesirable-reward",
    type=float,
    help="KTO: most reward of an undesirable answer (default: anything below the desirable bar).",
)
@click.option(
    "--top-fraction", type=click.FloatRange(0, 1, min_open=True), help="SFT: keep this share of the best."
)
@click.option("--teacher-needs-reward", is_flag=True, help="SFT: hold teacher traces to the reward bar too.")
@click.option(
    "--min-group-size",
    type=click.IntRange(min=2),
    help="DPO/GRPO: least scored members per group (GRPO's k).",
)
@click.option(
    "--min-margin", type=click.FloatRange(min=0), help="DPO: least reward gap between chosen and rejected."
)
@click.option("--max-pairs-per-group", type=click.IntRange(min=1), help="DPO: most pairs from one group.")
@click.option(
    "--group-by",
    type=click.Choice(["prompt", "group", "scenario"]),
    help="DPO/GRPO: what makes a group (members always share one prompt).",
)
@click.option("--no-corrections", is_flag=True, help="Leave feedback corrections out.")
@click.option("--no-dedup", is_flag=True, help="Keep exact and near duplicates.")
@click.option(
    "--replay-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    help="Share of the dataset drawn from earlier datasets of this kind.",
)
@click.option(
    "--tokenizer", type=click.Path(file_okay=False), help="HF model folder whose tokenizer counts tokens."
)
@click.option(
    "--max-length", type=click.IntRange(min=16), help="Max length the length report checks against."
)
@click.option("--name", help="A name to remember the dataset by.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the JSONL here.")
@click.option("--json", "as_json", is_flag=True, help="Print the recorded dataset as JSON.")
def build_cmd(kind: str, **opts: Any) -> None:
    """Build a dataset of KIND, record it, and write it as JSONL in TRL's format.

    Building the same content twice returns the dataset recorded the first time.
    """
    from learnloop.datasets import build_dataset
    from learnloop.store import open_database

    s = settings()
    if opts["max_length"]:
        s = s.model_copy(
            update={"datasets": s.datasets.model_copy(update={"max_length": opts["max_length"]})}
        )
    filters = {
        "lookback_hours": opts["lookback_hours"],
        "window_id": opts["window_id"],
        "scenario": opts["scenario"],
        "agents": list(opts["agents"]),
        "min_agents": opts["min_agents"],
        "agents_per": opts["agents_per"],
        "sources": list(opts["sources"]),
        "tags": list(opts["tags"]),
        "min_reward": opts["min_reward"],
        "max_undesirable_reward": opts["max_undesirable_reward"],
        "top_fraction": opts["top_fraction"],
        "teacher_bypass_reward": not opts["teacher_needs_reward"],
        "min_group_size": opts["min_group_size"],
        "min_margin": opts["min_margin"],
        "max_pairs_per_group": opts["max_pairs_per_group"],
        "group_by": opts["group_by"],
        "include_corrections": not opts["no_corrections"],
        "dedup": False if opts["no_dedup"] else None,
        "replay_fraction": opts["replay_fraction"],
    }
    db = open_database(s)
    info = build_dataset(
        db, kind, filters, settings=s, tokenizer=opts["tokenizer"], name=opts["name"], out=opts["out"]
    )
    if opts["as_json"]:
        echo_json(info.as_dict())
        return
    verb = "already recorded as" if info.reused else "recorded as"
    click.echo(
        f"{kind} dataset with {info.count} examples {verb} dataset {info.id} ({info.content_hash[:12]})"
    )
    click.echo(f"file: {opts['out'] or info.path}")
    _print_summary(info.stats)


@datasets_group.command("windows")
@click.option("--lookback-hours", type=float, help="Only trajectories created in the last N hours.")
@click.option("--scenario", help="Only trajectories of this scenario.")
@click.option("--agent", "agents", multiple=True, help="Only trajectories of this agent (repeatable).")
@click.option(
    "--source",
    "sources",
    multiple=True,
    type=click.Choice(["production", "teacher", "synthetic", "served"]),
    help="Only these sources (repeatable).",
)
@click.option(
    "--tag", "tags", multiple=True, help="Only trajectories carrying this tag (repeatable: all required)."
)
@click.option(
    "--min-scored",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="A window is ready with at least this many scored trajectories.",
)
@click.option("--min-agents", type=click.IntRange(min=1), help="... and at least this many distinct agents.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def windows_cmd(
    lookback_hours: float | None,
    scenario: str | None,
    agents: tuple[str, ...],
    sources: tuple[str, ...],
    tags: tuple[str, ...],
    min_scored: int,
    min_agents: int | None,
    as_json: bool,
) -> None:
    """Capture time windows (newest first): trajectories, agents, scored,
    and whether each is ready to train on."""
    from rich.console import Console
    from rich.table import Table

    from learnloop.datasets.filters import parse_filters
    from learnloop.datasets.windows import list_windows
    from learnloop.store import open_database
    from learnloop.store.models import utcnow

    s = settings()
    f = parse_filters(
        {
            "lookback_hours": lookback_hours,
            "scenario": scenario,
            "agents": list(agents),
            "sources": list(sources),
            "tags": list(tags),
        }
    ).resolved("holdout", s.datasets, utcnow())
    db = open_database(s)
    with db.read_session() as session:
        rows = list_windows(
            session, f, min_scored=min_scored, min_agents=min_agents, chunk_size=s.datasets.chunk_size
        )
    if as_json:
        echo_json([w.as_dict() for w in rows])
        return
    if not rows:
        click.echo("no trajectories match")
        return
    table = Table(title=f"windows (capture.window = {s.capture.window})")
    for col in ("window", "trajectories", "agents", "scored", "ready", "first", "last"):
        table.add_column(col)
    for w in rows:
        table.add_row(
            w.window or "(none)",
            str(w.trajectories),
            str(w.agents),
            str(w.scored),
            "yes" if w.ready else "no: " + "; ".join(w.reasons),
            (w.first or "")[:19],
            (w.last or "")[:19],
        )
    Console(width=160).print(table)


@datasets_group.command("list")
@click.option("--kind", type=click.Choice(["sft", "dpo", "grpo", "kto", "prompts", "holdout"]))
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_cmd(kind: str | None, limit: int, as_json: bool) -> None:
    """Recorded datasets, newest first."""
    from rich.console import Console
    from rich.table import Table

    from learnloop.datasets import list_datasets
    from learnloop.store import open_database

    db = open_database(settings())
    with db.read_session() as session:
        rows = list_datasets(session, kind=kind, limit=limit)
    if as_json:
        echo_json([{k: v for k, v in r.as_dict().items() if k != "stats"} for r in rows])
        return
    if not rows:
        click.echo("no datasets yet: `learnloop datasets build sft|dpo|grpo|holdout`")
        return
    table = Table(title="datasets")
    for col in ("id", "kind", "split", "examples", "p95 tokens", "truncated", "hash", "created", "name"):
        table.add_column(col)
    for r in rows:
        length = r.stats.get("length", {})
        table.add_row(
            str(r.id),
            r.kind,
            r.split,
            str(r.count),
            str(length.get("p95", "")),
            str(length.get("truncated", "")),
            r.content_hash[:12],
            r.created_at.strftime("%Y-%m-%d %H:%M"),
            r.name or "",
        )
    Console().print(table)


@datasets_group.command("show")
@click.argument("dataset_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the full record (stats included) as JSON.")
def show_cmd(dataset_id: int, as_json: bool) -> None:
    """A dataset's filters and stats: counts, token-length report, rewards, duplicates, rejected rows."""
    from learnloop.datasets import get_dataset
    from learnloop.store import open_database

    db = open_database(settings())
    with db.read_session() as session:
        info = get_dataset(session, dataset_id)
    if as_json:
        echo_json(info.as_dict())
        return
    click.echo(
        f"dataset {info.id}: {info.kind} ({info.split}), {info.count} examples, hash {info.content_hash}"
    )
    click.echo(f"file: {info.path}")
    click.echo(
        "filters: " + ", ".join(f"{k}={v}" for k, v in info.filters.items() if v not in (None, [], False))
    )
    _print_summary(info.stats)


@datasets_group.command("export")
@click.argument("dataset_id", type=int)
@click.argument("dest", type=click.Path(dir_okay=False))
def export_cmd(dataset_id: int, dest: str) -> None:
    """Write dataset DATASET_ID's JSONL to DEST."""
    from learnloop.datasets import export_dataset
    from learnloop.store import open_database

    db = open_database(settings())
    with db.read_session() as session:
        path = export_dataset(session, dataset_id, Path(dest))
    click.echo(f"wrote {path}")


def _print_summary(stats: dict[str, Any]) -> None:
    length = stats.get("length", {})
    click.echo(
        f"tokens ({length.get('tokenizer')}): p50 {length.get('p50')}, p95 {length.get('p95')}, "
        f"p99 {length.get('p99')}, max {length.get('max')} against max_length {length.get('max_length')}; "
        f"{length.get('truncated')} truncated (by up to {length.get('truncated_tokens_max')}); "
        f"suggested max_length {length.get('suggested_max_length')}"
    )
    if length.get("advice"):
        click.echo(f"advice: {length['advice']}")
    dup = stats.get("duplicates", {})
    rejected = stats.get("rejected", {})
    click.echo(f"duplicates removed: {dup.get('exact', 0)} exact, {dup.get('near', 0)} near")
    click.echo(f"rejected as malformed: {rejected.get('count', 0)}")
    for reason, n in list(rejected.get("by_reason", {}).items())[:10]:
        click.echo(f"  {n} × {reason}")
    click.echo("funnel: " + ", ".join(f"{k} {v}" for k, v in stats.get("funnel", {}).items()))
    if "groups" in stats:
        g = stats["groups"]
        click.echo("groups: " + ", ".join(f"{k} {v}" for k, v in g.items() if k not in ("items", "listed")))
    if stats.get("replay"):
        r = stats["replay"]
        click.echo(f"replay: {r['added']} of {r['wanted']} wanted from earlier datasets")
