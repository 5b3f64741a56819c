"""The training entry point, both a library function and a plain script.

In-process::

    from learnloop.training.run import train
    result = train(config, control=Control(), progress=print)

As a process (what the daemon supervises, and what ``accelerate launch`` runs on many GPUs)::

    python -m learnloop.training.run --config cfg.json
    accelerate launch --num_processes 4 -m learnloop.training.run --config cfg.json

The script prints one JSON line per progress event on stdout (rank 0) and turns SIGTERM/SIGINT
into a clean stop (checkpoint, then exit 0), so a supervisor can stop it and later resume it.
Exit status: 0 done or stopped, 1 failed, 2 bad config, 3 nothing to learn (a rollout run whose
rewards never varied: its last event is ``no_signal``; retrying the same run would not help).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from learnloop.errors import ConfigError, LearnloopError, NoLearningSignal
from learnloop.training.config import TrainConfig, validate_config
from learnloop.training.control import Control, FileControl
from learnloop.training.loop import ProgressEvent, TrainResult, train_loop

EXIT_NO_SIGNAL = 3

__all__ = [
    "EXIT_NO_SIGNAL",
    "ProgressEvent",
    "TrainResult",
    "load_config",
    "main",
    "train",
    "validate_config",
]


def train(
    config: TrainConfig,
    *,
    control: Control | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> TrainResult:
    """Run (or resume) one training run. ``control`` defaults to ``FileControl(config.output_dir)``.

    Resumes from the newest committed checkpoint in ``output_dir`` when there is one.
    """
    return train_loop(config, control=control, progress=progress)


def load_config(path: Path | str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a TrainConfig from JSON, YAML or TOML; ``overrides`` win (a nested section key by key)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"Training config {path} does not exist.") from None
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parser error is a config error for the user
        raise ConfigError(f"Cannot parse training config {path}: {exc}") from None
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}  # a nested section: the flags given win, the rest stays
        elif value is not None:
            data[key] = value
    return validate_config(data, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m learnloop.training.run", description="Run or resume one learnloop training run."
    )
    parser.add_argument("--config", required=True, help="TrainConfig as JSON, YAML or TOML.")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except LearnloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    control = FileControl(config.output_dir)

    def on_signal(signum: int, frame: Any) -> None:
        control.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def progress(event: ProgressEvent) -> None:
        print(json.dumps(event.as_dict()), flush=True)

    try:
        result = train(config, control=control, progress=progress)
    except NoLearningSignal as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_SIGNAL
    except LearnloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if result.adapter_dir or result.stopped else 1


if __name__ == "__main__":
    sys.exit(main())
