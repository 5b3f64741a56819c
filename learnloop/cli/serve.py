"""`learnloop serve`: the HTTP server (ingest API, OpenAPI docs, inbox watcher)."""

from __future__ import annotations

import logging
from typing import Any

import click

from learnloop.cli.main import settings


@click.command("serve")
@click.option("--host", default=None, help="Interface to bind. [default: server.host, 127.0.0.1]")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="TCP port. [default: server.port, 8377]")
@click.option(
    "--watch-inbox/--no-watch-inbox",
    default=None,
    help="Import JSONL files dropped into <data dir>/inbox. [default: server.watch_inbox]",
)
@click.option("--daemon/--no-daemon", "with_daemon", default=True, show_default=True,
              help="Also run the daemon (triggers, jobs, background scoring) in this process.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def serve_cmd(host: str | None, port: int | None, watch_inbox: bool | None, with_daemon: bool, log_level: str) -> None:
    """Run the learnloop server. Applies database migrations first; API docs at /docs."""
    import uvicorn

    from learnloop import __version__
    from learnloop.api import create_app
    from learnloop.paths import data_dir
    from learnloop.store import open_database

    s = settings()
    host = host or s.server.host
    port = port or s.server.port
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    data_dir(s.data_dir).ensure()
    db = open_database(s)  # migrations applied here; an unreachable database stops the start with a clear error
    app = create_app(s, db, watch_inbox=watch_inbox)
    watching = s.server.watch_inbox if watch_inbox is None else watch_inbox
    click.echo(
        f"learnloop {__version__} on http://{host}:{port} (database {s.public_dict()['database_url']}; "
        + (f"watching {data_dir(s.data_dir).inbox})" if watching else "inbox not watched)"),
        err=True,
    )
    daemon = _start_daemon(s, db) if with_daemon else None
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        if daemon is not None:
            daemon.stop()  # a running training checkpoints and is requeued
        db.dispose()


def _start_daemon(s: Any, db: Any) -> Any:
    """The daemon's one hook into serve: its worker runs in this process (a config lock refuses the start)."""
    from learnloop.daemon.service import Daemon

    daemon = Daemon(s, db)
    daemon.start()
    return daemon
