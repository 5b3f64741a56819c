"""`learnloop train`: run or resume a LoRA training run, steer a running one, merge an adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from learnloop.cli.main import echo_json


@click.group("train")
def train_group() -> None:
    """Fine-tune LoRA adapters (SFT, DPO, GRPO), pause/stop/resume runs, merge adapters."""


# Flags that override top-level TrainConfig fields; None means "keep the config file's value".
_OVERRIDES = [
    ("--algorithm", click.Choice(["sft", "dpo", "grpo"]), "Training algorithm."),
    ("--base-model", str, "HF model folder, GGUF file or prepared model name."),
    ("--dataset", click.Path(dir_okay=False), "Training JSONL in TRL's format."),
    ("--output-dir", click.Path(file_okay=False), "Where checkpoints, metrics and the adapter go."),
    ("--init-adapter", click.Path(file_okay=False), "Continue training this adapter."),
    ("--max-steps", click.IntRange(min=1), "Optimizer steps (overrides epochs)."),
    ("--epochs", click.FloatRange(min=0, min_open=True), "Passes over the dataset."),
    ("--learning-rate", click.FloatRange(min=0, min_open=True), "Peak learning rate."),
    ("--batch-size", click.IntRange(min=1), "Examples per micro-batch."),
    ("--grad-accum", click.IntRange(min=1), "Micro-batches per optimizer step."),
    ("--max-length", click.IntRange(min=8), "Tokens per example (longer ones are truncated)."),
    ("--checkpoint-every", click.IntRange(min=1), "Optimizer steps between checkpoints."),
    ("--seed", int, "Random seed."),
    ("--device", str, "auto, cpu, cuda, cuda:N or mps."),
    ("--dtype", click.Choice(["auto", "float32", "bfloat16", "float16"]), "Weights dtype."),
]


def _with_overrides(fn: Any) -> Any:
    for flag, typ, help_text in reversed(_OVERRIDES):
        fn = click.option(flag, type=typ, default=None, help=help_text)(fn)
    return fn


@train_group.command("run")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="TrainConfig as JSON, YAML or TOML (flags override it; without it the flags must name "
                   "--algorithm, --base-model, --dataset and --output-dir).")
@_with_overrides
@click.option("--allow-truncation", is_flag=True,
              help="Start even when more than training.max_truncated_share of the examples exceed max_length.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line per progress event instead of a progress bar.")
def run_cmd(config_path: str | None, as_json: bool, allow_truncation: bool, **flags: Any) -> None:
    """Run a training run, or resume it from its newest committed checkpoint.

    `learnloop train control OUTPUT_DIR pause|resume|stop` steers it while it runs; Ctrl-C stops it
    cleanly (a checkpoint is written) and running the same command again resumes.
    """
    from learnloop.training.control import FileControl
    from learnloop.training.run import load_config, train, validate_config

    overrides = {k: v for k, v in flags.items() if v is not None}
    config = load_config(config_path, overrides) if config_path else validate_config(overrides, "command-line flags")
    config = _length_guardrail(config, allow_truncation, as_json)
    control = FileControl(config.output_dir)
    if as_json:
        result = _run_json(config, control, train)
    else:
        result = _run_rich(config, control, train)
    if result.stopped and result.checkpoint is None:
        click.echo(f"stopped at step {result.step}/{result.total_steps}, before any checkpoint. Run again to start.")
    elif result.stopped:
        click.echo(f"stopped at step {result.step}/{result.total_steps}; checkpoint {result.checkpoint}. Run again to resume.")
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
    check = check_training_lengths(config.dataset, tokenizer=tokenizer, max_length=config.max_length,
                                   max_truncated_share=s.training.max_truncated_share)
    if as_json:
        click.echo(json.dumps({"kind": "lengths", "ok": check.ok, **{k: v for k, v in check.report.items() if k != "longest"}}))
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
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[info]}"), console=console, transient=False) as bar:
        task = bar.add_task(f"{config.algorithm} training", total=None, info="loading")

        def progress(event: Any) -> None:
            bar.update(task, total=event.total_steps, completed=event.step)
            if event.kind == "step":
                m = event.metrics
                bar.update(task, info=f"loss {m['loss']:.4f}  lr {m['lr']:.2e}  {m['tokens_per_s']:.0f} tok/s")
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
@click.option("--adapter", "adapter_dir", required=True, type=click.Path(exists=True, file_okay=False), help="LoRA adapter folder.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Where the merged HF model goes.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto", show_default=True)
def merge_cmd(base_model: str, adapter_dir: str, out_dir: str, dtype: str) -> None:
    """Merge ADAPTER into BASE_MODEL's weights and save a standalone HF model folder."""
    from learnloop.models.loading import merge_adapter

    path = merge_adapter(base_model, adapter_dir, out_dir, dtype=dtype)
    click.echo(f"merged model written to {path}")
