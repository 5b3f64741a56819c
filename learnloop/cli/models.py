"""`learnloop models`: prepare base models (GGUF → HF safetensors folder) and list them."""

from __future__ import annotations

import click

from learnloop.cli.main import echo_json, settings


@click.group("models")
def models_group() -> None:
    """Prepare base models for training (convert a GGUF once) and list the prepared ones."""


@models_group.command("prepare")
@click.argument("model")
@click.option(
    "--name", help="Folder name under <data_dir>/models (default: the known name or the GGUF file's stem)."
)
@click.option("--force", is_flag=True, help="Convert again even if it is already prepared.")
@click.option("--json", "as_json", is_flag=True, help="Print the prepared model as JSON.")
def prepare_cmd(model: str, name: str | None, force: bool, as_json: bool) -> None:
    """Convert MODEL (a known name such as `smollm2`, or a .gguf file) into an HF safetensors folder.

    Runs once; later calls find the folder and return at once (unless --force).
    """
    from learnloop.models.prepared import prepare_model

    info = prepare_model(model, settings().data_dir, force=force, name=name)
    if as_json:
        echo_json(info.as_dict())
        return
    verb = "already prepared" if info.reused else "prepared"
    click.echo(f"{info.name} {verb}: {info.path} ({_params(info.params)} params, {_size(info.size_bytes)})")


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_cmd(as_json: bool) -> None:
    """Prepared base models: name, path, parameter count, size on disk."""
    from rich.console import Console
    from rich.table import Table

    from learnloop.models.prepared import KNOWN_MODELS, list_models

    rows = list_models(settings().data_dir)
    if as_json:
        echo_json([r.as_dict() for r in rows])
        return
    if not rows:
        click.echo(
            f"no prepared models yet: `learnloop models prepare {sorted(KNOWN_MODELS)[0]}` or a .gguf file"
        )
        return
    table = Table(title="models")
    for col in ("name", "path", "params", "size"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.name, str(r.path), _params(r.params), _size(r.size_bytes))
    Console().print(table)


def _params(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
