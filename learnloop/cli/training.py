"""`learnloop train`: run or resume a LoRA training run, steer a running one, merge an adapter."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import click

from learnloop.cli.main import echo_json


@click.group("train")
def train_group() -> None:
    """Fine-tune LoRA adapters (SFT, DPO, GRPO), pause/stop/resume runs, merge adapters."""


def _click_type(annotation: Any) -> Any:
    """The click type for a TrainConfig field's annotation; None for what only a config file can set."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if typing.get_origin(annotation) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)])
    if len(args) != 1:
        return None  # e.g. a list or a keyword: config file only
    (kind,) = args
    if typing.get_origin(kind) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(kind)])
    return {bool: bool, int: click.INT, float: click.FLOAT, str: click.STRING, Path: click.Path()}.get(kind)


def _config_flags() -> list[tuple[str, str, Any, str]]:
    """(flag, parameter name, click type, help) for every TrainConfig field a flag can set; the fields
    of the nested sections as --lora-r, --dpo-beta, ... The help is the field's description."""
    from pydantic import BaseModel

    from learnloop.training.config import TrainConfig

    flags = []
    for name, info in TrainConfig.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            fields = [
                (f"{name}__{sub}", f"{name}-{sub}", sub_info)
                for sub, sub_info in section.model_fields.items()
            ]
        else:
            fields = [(name, name, info)]
        for param, flag, field_info in fields:
            kind = _click_type(field_info.annotation)
            if kind is not None:
                flags.append((f"--{flag.replace('_', '-')}", param, kind, field_info.description or ""))
    return flags


def _with_config_flags(fn: Any) -> Any:
    # None means "keep the config file's value", so no flag has a default of its own.
    for flag, param, kind, help_text in reversed(_config_flags()):
        if kind is bool:
            option = click.option(f"{flag}/--no-{flag[2:]}", param, default=None, help=help_text)
        else:
            option = click.option(flag, param, type=kind, default=None, help=help_text)
        fn = option(fn)
    return fn


def _overrides(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags given, as TrainConfig keys: ``lora__r`` becomes ``{"lora": {"r": ...}}``."""
    out: dict[str, Any] = {}
    for param, value in flags.items():
        if value is None:
            continue
        section, _, key = param.partition("__")
        if key:
            out.setdefault(section, {})[key] = value
        else:
            out[param] = value
    return out


@train_group.command("run")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="TrainConfig as JSON, YAML or TOML (flags override it; without it the flags must name "
    "--algorithm, --base-model, --dataset and --output-dir).",
)
@_with_config_flags
@click.option(
    "--allow-truncation",
    is_flag=True,
    help="Start even when more than training.max_truncated_share of the examples exceed max_length.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON line per progress event instead of a progress bar.",
)
def run_cmd(config_path: str | None, as_json: bool, allow_truncation: bool, **flags: Any) -> None:
    """Run a training run, or resume it from its newest committed checkpoint.

    `learnloop train control OUTPUT_DIR pause|resume|stop` steers it while it runs; Ctrl-C stops it
    cleanly (a checkpoint is written) and running the same command again resumes.
    """
    from learnloop.training.control import FileControl
    from learnloop.training.run import load_config, train, validate_config

    overrides = _overrides(flags)
    config = (
        load_config(config_path, overrides)
        if config_path
        else validate_config(overrides, "command-line flags")
    )
    config = _length_guardrail(config, allow_truncation, as_json)
    control = FileControl(config.output_dir)
    if as_json:
        result = _run_json(config, control, train)
    else:
        result = _run_rich(config, control, train)
    if result.stopped and result.checkpoint is None:
        click.echo(
            f"stopped at step {result.step}/{result.total_steps}, before any checkpoint. Run again to start."
        )
    elif result.stopped:
        click.echo(
            f"stopped at step {result.step}/{result.total_steps}; checkpoint {result.checkpoint}. "
            "Run again to resume."
        )
    else:
        click.echo(f"done: {result.step} steps; adapter {result.adapter_dir}; metrics {result.metrics_path}")


def _length_guardrail(config: Any, allow_truncation: bool, as_json: bool) -> Any:
    """Measure the dataset with the model's tokenizer before any training; refuse when too much would be cut.

    A max_length set neither in the config file nor by a flag is ``datasets.max_length``, so the
    length the dataset was reported against is the one training uses.
    """
    from learnloop.cli.main import settings
    from learnloop.datasets.guardrails import check_training_lengths
    from learnloop.errors import TruncationRefused
    from learnloop.models import load_tokenizer, resolve_base_model

    s = settings()
    if "max_length" not in config.model_fields_set:
        config = config.model_copy(update={"max_length": s.datasets.max_length})
    tokenizer = load_tokenizer(resolve_base_model(config.base_model, s.data_dir))
    check = check_training_lengths(
        config.dataset,
        tokenizer=tokenizer,
        max_length=config.max_length,
        max_truncated_share=s.training.max_truncated_share,
    )
    if as_json:
        report = {k: v for k, v in check.report.items() if k != "longest"}
        click.echo(json.dumps({"kind": "lengths", "ok": check.ok, **report}))
    else:
        click.echo(check.summary(), err=True)
    if not check.ok:
        if not allow_truncation:
            raise TruncationRefused(check.refusal(), check)
        click.echo(f"warning (--allow-truncation): {check.refusal()}", err=True)
    return config


def _run_json(config: Any, control: Any, train: Any) -> Any:
    def progress(event: Any) -> None:
        click.echo(json.dumps(event.as_dict()))

    try:
        return train(config, control=control, progress=progress)
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        control.stop()
        raise


def _run_rich(config: Any, control: Any, train: Any) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(f"{config.algorithm} training", total=None, info="loading")

        def progress(event: Any) -> None:
            bar.update(task, total=event.total_steps, completed=event.step)
            if event.kind == "step":
                m = event.metrics
                bar.update(
                    task, info=f"loss {m['loss']:.4f}  lr {m['lr']:.2e}  {m['tokens_per_s']:.0f} tok/s"
                )
            elif event.kind in ("paused", "resumed", "stopped"):
                bar.update(task, info=event.kind)
            elif event.kind == "start":
                console.print(event.message)
            elif event.kind == "checkpoint":
                console.print(f"checkpoint {event.path}")

        return train(config, control=control, progress=progress)


@train_group.command("control")
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.argument("command", type=click.Choice(["pause", "resume", "stop"]))
def control_cmd(output_dir: str, command: str) -> None:
    """Pause, resume or stop the run writing to OUTPUT_DIR (it reads the command between steps)."""
    from learnloop.training.control import write_control

    path = write_control(Path(output_dir), command)  # type: ignore[arg-type]
    click.echo(f"{command} requested ({path})")


@train_group.command("status")
@click.argument("output_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_cmd(output_dir: str, as_json: bool) -> None:
    """Newest committed checkpoint, last metrics and requested control of the run in OUTPUT_DIR."""
    from learnloop.training.checkpoint import latest_checkpoint
    from learnloop.training.control import read_control
    from learnloop.training.loop import ADAPTER_DIR, METRICS_FILE

    out = Path(output_dir)
    ckpt = latest_checkpoint(out)
    metrics_file = out / METRICS_FILE
    lines = metrics_file.read_text().splitlines() if metrics_file.exists() else []
    data = {
        "checkpoint": str(ckpt.path) if ckpt else None,
        "checkpoint_step": ckpt.step if ckpt else None,
        "last_metrics": json.loads(lines[-1]) if lines else None,
        "control": read_control(out) or "run",
        "adapter": str(out / ADAPTER_DIR) if (out / ADAPTER_DIR).exists() else None,
    }
    if as_json:
        echo_json(data)
        return
    for key, value in data.items():
        click.echo(f"{key}: {value}")


@train_group.command("merge")
@click.option("--base-model", required=True, help="HF model folder, GGUF file or prepared model name.")
@click.option(
    "--adapter",
    "adapter_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="LoRA adapter folder.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Where the merged HF model goes.",
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
)
def merge_cmd(base_model: str, adapter_dir: str, out_dir: str, dtype: str) -> None:
    """Merge ADAPTER into BASE_MODEL's weights and save a standalone HF model folder."""
    from learnloop.models.loading import merge_adapter

    path = merge_adapter(base_model, adapter_dir, out_dir, dtype=dtype)
    click.echo(f"merged model written to {path}")
