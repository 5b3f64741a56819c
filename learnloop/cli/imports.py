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
    file's own ids, or from a line's content and number). A folder's other entries are listed
    with the reason each is passed over; links out of the folder are never followed, and an
    entry named as the format's files that is no regular file inside it (a link out, a dangling
    link, a folder, a pipe) is refused. Exits non-zero if any file failed or was refused.
    """

    from learnloop.capture.formats import import_file, scan_format
    from learnloop.errors import LearnloopError
    from learnloop.store import open_database
    from learnloop.store.jsonl import FileRules, failure_report

    s = settings()
    scans = [scan_format(p, fmt) for p in paths]  # every path checked before any import
    files = [f for scan in scans for f in scan.files]
    failures: list[tuple[Path, str]] = []
    for entry in (e for scan in scans for e in scan.passed):
        if entry.refused:
            failures.append((entry.path, f"{entry.path} was not imported: it is {entry.reason}."))
        if as_json:
            line = {"path": str(entry.path), "skipped": entry.reason, "refused": entry.refused}
            click.echo(json.dumps(line))
        else:
            click.echo(f"{'refused' if entry.refused else 'skipped'} {entry.path}: {entry.reason}", err=True)
    refused = len(failures)
    db = open_database(s)
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
                    # Read as what it was when scanned: a regular file, never a link swapped in since.
                    rules=FileRules(regular_only=True),
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
            f"total: {len(files) + refused - len(failures)} of {len(files) + refused} files imported, "
            f"{totals['inserted']} inserted, {totals['duplicates']} duplicates"
        )
    if failures:
        for _file, message in failures:
            click.echo(f"Error: {message}", err=True)
        raise click.ClickException(
            f"{len(failures)} of {len(files) + refused} file(s) not imported (nothing from them was "
            "stored); see above."
        )
