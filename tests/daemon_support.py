"""Helpers for the daemon tests: trajectories in the store, settings with loops, a daemon process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import update

from learnloop.config import Settings
from learnloop.store import Database, ingest, parse_batch
from learnloop.store.models import Split, Trajectory

ROOT = Path(__file__).resolve().parents[1]


def chat(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def add(db: Database, items: list[dict[str, Any]]) -> None:
    """Ingest trajectories; ``reward`` becomes a score, ``holdout`` moves the row to the held-out split."""
    rows = []
    for it in items:
        t = {k: v for k, v in it.items() if k not in ("reward", "holdout")}
        if it.get("reward") is not None:
            t["scores"] = {"quality": it["reward"]}
        rows.append(t)
    with db.session() as s:
        ingest(s, parse_batch({"trajectories": rows}), holdout_fraction=0.0)
        held = [it["id"] for it in items if it.get("holdout")]
        if held:
            s.execute(update(Trajectory).where(Trajectory.id.in_(held)).values(split=Split.holdout))


def traces(
    prefix: str, n: int, *, source: str = "teacher", scenario: str = "qa", **kw: Any
) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}-{i}",
            "messages": chat(f"question {prefix} {i}: what is {i} plus {i}?", f"it is {2 * i}."),
            "source": source,
            "scenario": scenario,
            **kw,
        }
        for i in range(n)
    ]


def loop_settings(settings: Settings, db_url: str | None = None, **loop: Any) -> Settings:
    """Settings with one loop. The tiny cycles here train a few steps on a few examples: the loop's
    step floor is off unless a test sets min_steps (tests of the floor and of the gate's held-out
    minimum set their own)."""
    base = {"name": "qa", "algorithm": "sft", "scenario": "qa", "sources": ["teacher"], "min_steps": 0}
    data = settings.model_dump()
    # No held-out wait unless asked: most of these tests are about triggers, not the gate.
    triggers = {"min_holdout": 0, **(loop.pop("triggers", None) or {})}
    data["loops"] = [{**base, **loop, "triggers": triggers}]
    if db_url:
        data["database_url"] = db_url
    data["daemon"] = {
        **data["daemon"],
        "poll_interval": 0.2,
        "lease_seconds": 5,
        "heartbeat_seconds": 0.5,
        "retry_backoff": 0.0,
        **data.get("_daemon", {}),
    }
    return Settings.model_validate(data)


def tiny_train(**kw: Any) -> dict[str, Any]:
    return {
        "lora": {"r": 4, "alpha": 8},
        "batch_size": 4,
        "max_steps": 6,
        "learning_rate": 1e-2,
        "lr_scheduler": "constant",
        "checkpoint_every": 2,
        "device": "cpu",
        "max_length": 64,
        **kw,
    }


def daemon_env(data_dir: Path, db_url: str, config_file: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNLOOP_")}
    env.update(
        LEARNLOOP_DATA_DIR=str(data_dir),
        LEARNLOOP_DATABASE_URL=db_url,
        LEARNLOOP_DAEMON__POLL_INTERVAL="0.2",
        LEARNLOOP_DAEMON__LEASE_SECONDS="10",
        LEARNLOOP_DAEMON__HEARTBEAT_SECONDS="0.5",
        LEARNLOOP_DAEMON__RETRY_BACKOFF="0",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    if config_file is not None:
        env["LEARNLOOP_CONFIG"] = str(config_file)
    return env


def start_daemon(env: dict[str, str], log: Path, *, scoring: bool = False) -> subprocess.Popen[bytes]:
    out = open(log, "ab")
    args = [] if scoring else ["--no-scoring"]
    return subprocess.Popen(
        [sys.executable, "-m", "learnloop", "daemon", *args],
        env=env,
        cwd=log.parent,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def wait_for(pred: Any, timeout: float = 60.0, every: float = 0.1, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def training_processes(marker: str) -> list[int]:
    """Pids of live `learnloop.training.run` processes whose command line mentions ``marker``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if "learnloop.training.run" in cmd and marker in cmd and stat.split(")")[-1].split()[0] != "Z":
            found.append(int(pid))
    return found
