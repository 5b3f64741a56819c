"""The `learnloop` command. Each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import click

from learnloop.errors import LearnloopError
from learnloop.importing import import_object

# Subcommands live in modules named for their stage and are imported only when used,
# so `learnloop config` does not pay for torch.
LAZY_COMMANDS: dict[str, str] = {
    "config": "learnloop.cli.main:config_cmd",
    "datasets": "learnloop.cli.datasets:datasets_group",
    "db": "learnloop.cli.main:db_group",
    "stats": "learnloop.cli.main:stats_cmd",
    "serve": "learnloop.cli.serve:serve_cmd",
    "chat": "learnloop.cli.serve:chat_cmd",
    "alias": "learnloop.cli.serve:alias_group",
    "import": "learnloop.cli.imports:import_cmd",
    "capture": "learnloop.cli.capture:capture_group",
    "rewards": "learnloop.cli.rewards:rewards_group",
    "train": "learnloop.cli.training:train_group",
    "models": "learnloop.cli.models:models_group",
    "daemon": "learnloop.cli.daemon:daemon_group",
    "jobs": "learnloop.cli.daemon:jobs_group",
    "loops": "learnloop.cli.daemon:loops_group",
    "versions": "learnloop.cli.versions:versions_group",
    "eval": "learnloop.cli.evaluation:eval_group",
    "export": "learnloop.cli.versions:export_cmd",
    "promote": "learnloop.cli.versions:promote_cmd",  # shortcuts for `versions promote|rollback`
    "rollback": "learnloop.cli.versions:rollback_cmd",
    "status": "learnloop.cli.watch:status_cmd",
    "alerts": "learnloop.cli.watch:alerts_group",
    "demo": "learnloop.cli.demo:demo_cmd",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            return import_object(LAZY_COMMANDS[name])
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LearnloopError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="learnloop")
def cli() -> None:
    """learnloop: capture LLM interactions, score them, fine-tune LoRA adapters,
    evaluate, promote and serve."""


_fallback_noted = False


def settings():  # noqa: ANN201 - small indirection so tests can point at their own settings
    from learnloop.config import config_origin, load_settings

    s = load_settings()
    note_fallback(config_origin(), s.data_dir)
    return s


def note_fallback(origin: Any, data_dir: Any) -> None:
    """Say once per command that no config file was found and the defaults (~/.learnloop) are used:
    run from the wrong folder, a command would otherwise read another database without a word."""
    global _fallback_noted
    if origin.fell_back and not _fallback_noted:
        _fallback_noted = True
        click.echo(origin.fallback_note(data_dir), err=True)


def echo_json(data: Any) -> None:
    # Strict JSON: NaN and infinities (which json.dumps would print bare) become null.
    click.echo(json.dumps(_finite(data), indent=2, default=str, allow_nan=False))


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


@click.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML-like text.")
@click.option(
    "--example",
    is_flag=True,
    help="Print every setting with its default and a comment (learnloop.example.toml).",
)
def config_cmd(as_json: bool, example: bool) -> None:
    """Print the effective configuration (defaults < learnloop.toml < LEARNLOOP_* env vars), after the
    config file, environment variables and data dir it came from (on stderr with --json)."""
    if example:
        from learnloop.config_example import example_toml

        click.echo(example_toml(), nl=False)
        return
    from learnloop.config import config_origin, load_settings

    global _fallback_noted
    _fallback_noted = True  # the header below says it
    s = load_settings()
    data = s.public_dict()
    for line in config_origin().lines(s.data_dir):
        click.echo(f"# {line}", err=as_json)
    if as_json:
        echo_json(data)
        return
    for key, value in data.items():
        if not isinstance(value, dict):
            click.echo(f"{key} = {json.dumps(value)}")
    for key, value in data.items():
        if isinstance(value, dict):
            click.echo(f"\n[{key}]")
            for k, v in value.items():
                click.echo(f"{k} = {json.dumps(v)}")


@click.group("db")
def db_group() -> None:
    """Database schema management."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target Alembic revision.")
def db_upgrade(revision: str) -> None:
    """Apply migrations to the configured database."""
    from learnloop.store.db import Database, current_revision

    s = settings()
    db = Database(s.resolved_database_url)
    db.upgrade(revision)
    click.echo(f"database at revision {current_revision(db.engine)} ({s.public_dict()['database_url']})")


@db_group.command("current")
def db_current() -> None:
    """Print the database's current migration revision."""
    from learnloop.store.db import Database, current_revision

    db = Database(settings().resolved_database_url)
    click.echo(current_revision(db.engine) or "(empty database: run `learnloop db upgrade`)")


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--days", type=click.IntRange(min=1), default=None, help="Only trajectories created in the last N days."
)
@click.option("--agent", default=None, help="Only trajectories of this agent.")
def stats_cmd(as_json: bool, days: int | None, agent: str | None) -> None:
    """Trajectory counts by source, scenario, agent, split and day."""
    import datetime as dt

    from rich.console import Console
    from rich.table import Table

    from learnloop.store import open_database
    from learnloop.store.trajectories import stats

    db = open_database(settings())
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=days) if days else None
    with db.read_session() as s:
        data = stats(s, since=since, agent=agent)
    if as_json:
        echo_json(data)
        return
    console = Console()
    for section, rows in data.items():
        if not rows:
            continue
        table = Table(title=section.replace("_", " "))
        for col in rows[0]:
            table.add_column(col)
        for row in rows:
            table.add_row(*(str(v) for v in row.values()))
        console.print(table)
    if not any(data.values()):
        console.print("no trajectories stored yet")


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="learnloop")


if __name__ == "__main__":
    main(sys.argv[1:])
