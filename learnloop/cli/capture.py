"""`learnloop capture`: look at and deliver what the capture SDK left in the spool."""

from __future__ import annotations

import click

from learnloop.cli.main import echo_json, settings


@click.group("capture")
def capture_group() -> None:
    """The capture SDK's spool: records waiting for the store or server."""


@capture_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_cmd(as_json: bool) -> None:
    """Batches and records waiting in <data dir>/spool, by writer, and records the store refused."""
    from learnloop.capture.spool import spool_status
    from learnloop.paths import data_dir

    data = spool_status(data_dir(settings().data_dir).spool)
    if as_json:
        echo_json(data)
        return
    click.echo(f"spool: {data['spool']}")
    click.echo(f"waiting: {data['records']} record(s) in {data['batches']} batch(es)")
    for w in data["writers"]:
        state = (
            "running" if w["alive"] else "stopped: delivered by the next start or `learnloop capture deliver`"
        )
        click.echo(f"  writer {w['owner']}: {w['records']} record(s), {w['batches']} batch(es) ({state})")
    if data["rejected_records"]:
        click.echo(
            f"refused by the store: {data['rejected_records']} record(s) in "
            f"{data['spool']}/rejected/ (see 'reason')"
        )


@capture_group.command("deliver")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to keep trying before leaving the rest spooled.",
)
def deliver_cmd(timeout: float) -> None:
    """Deliver the spooled batches of stopped writers now, to the configured database or server."""
    from learnloop.capture.client import CaptureClient

    client = CaptureClient(settings())
    done = client.flush(timeout)
    stats = client.stats()
    client.close(0)
    click.echo(
        f"delivered {stats['delivered']} record(s) via {stats['transport']}; "
        f"{stats['pending_batches']} batch(es) still spooled; {stats['rejected']} refused"
    )
    if not done:
        raise click.ClickException(
            f"Could not deliver everything within {timeout:.0f}s ({stats['last_error']}). "
            "The rest stays in the spool; run this again when the store is reachable."
        )
