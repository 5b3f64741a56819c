"""`learnloop import`: JSONL files into the store, each file all-or-nothing."""

from __future__ import annotations

import json
from pathlib import Path

import click

from learnloop.cli.main import settings


@click.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "otlp-json", "openai-chat", "langfuse"]),
    default="jsonl",
    show_default=True,
    help="jsonl: learnloop's records, one per line. otlp-json: OTLP/JSON trace exports (one request "
    "per file or per line). openai-chat: OpenAI chat JSONL ({messages} or {request, response} per line). "
    "langfuse: Langfuse traces with their observations, or observations (JSON or JSONL).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file.")
def import_cmd(paths: tuple[Path, ...], fmt: str, as_json: bool) -> None:
    """Import files (or folders of them) into the store: learnloop JSONL by default, or the traces
    other tools export (--format).

    Each file is validated whole first and stored in one transaction: an invalid file stores
    nothing and every problem is reported. Re-importing a file is a no-op (ids come from the
    file's own ids, or from a line's content and number). Exits non-zero if any file failed.
    """

    from learnloop.capture.formats import format_files, import_file
    from learnloop.errors import LearnloopError
    from learnloop.store import open_database
    from learnloop.store.jsonl import failure_report

    s = settings()
    files = [f for p in paths for f in format_files(p, fmt)]  # every path checked before any import
    db = open_database(s)
    failures: list[tuple[Path, str]] = []
    totals = {"records": 0, "inserted": 0, "duplicates": 0, "feedback_inserted": 0, "scores_inserted": 0}
    try:
        for f in files:
            try:
                r = import_file(
                    db,
                    f,
                    fmt,
                    project=s.project,
                    holdout_fraction=s.datasets.holdout_fraction,
                    window=s.capture.window,
                )
            except LearnloopError as exc:
                failures.append((f, failure_report(exc)))
                if as_json:
                    click.echo(json.dumps({"path": str(f), "error": str(exc)}))
                continue
            for k in totals:
                totals[k] += getattr(r, k)
            if as_json:
                click.echo(json.dumps(r.as_dict()))
            else:
                click.echo(
                    f"{f}: {r.records} records, {r.inserted} inserted, {r.duplicates} duplicates, "
                    f"{r.feedback_inserted} feedback, {r.scores_inserted} scores"
                )
    finally:
        db.dispose()
    if not as_json and len(files) > 1:
        click.echo(
            f"total: {len(files) - len(failures)} of {len(files)} files imported, "
            f"{totals['inserted']} inserted, {totals['duplicates']} duplicates"
        )
    if failures:
        for _file, message in failures:
            click.echo(f"Error: {message}", err=True)
        raise click.ClickException(
            f"{len(failures)} of {len(files)} file(s) not imported (nothing from them was stored); see above."
        )
