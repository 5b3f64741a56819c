"""Checkpoints, control and resume: a stopped, paused, killed or torn run ends
where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from learnloop.training.checkpoint import MARKER, latest_checkpoint, list_checkpoints
from learnloop.training.config import TrainConfig
from learnloop.training.control import Control, FileControl, read_control, write_control
from learnloop.training.run import ProgressEvent, train
from training_support import adapter_weights, config_dict

# Gradient accumulation, warmup + cosine, several epochs and LoRA dropout (it draws from the torch
# RNG): every piece of state a resume must restore.
RUN = {
    "lora": {"r": 8, "alpha": 16, "dropout": 0.1},
    "max_steps": 16,
    "checkpoint_every": 3,
    "batch_size": 2,
    "grad_accum": 2,
    "lr_scheduler": "cosine",
    "warmup_steps": 2,
}


def _config(tiny_model_dir: Path, tmp: Path, out: str, **kw: Any) -> TrainConfig:
    return TrainConfig.model_validate(config_dict(tiny_model_dir, tmp, out=out, **{**RUN, **kw}))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = adapter_weights(a), adapter_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-5, atol=1e-6), k


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The adapter of the uninterrupted run every interrupted one must reproduce."""
    result = train(_config(tiny_model_dir, tmp_path_factory.mktemp("ref"), "ref"))
    assert result.step == 16 and not result.stopped
    return result.adapter_dir


def test_checkpoint_contents_and_retention(reference: Path) -> None:
    out = reference.parent
    ckpts = list_checkpoints(out)
    assert [s for s, _ in ckpts] == [15, 16]  # keep_checkpoints=2 of 3, 6, ..., 15, 16 (the final one)
    path = ckpts[-1][1]
    names = {p.name for p in path.iterdir()}
    assert {"adapter", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json", MARKER} <= names
    marker = json.loads((path / MARKER).read_text())
    assert (
        marker["step"] == 16
        and "optimizer.pt" in marker["files"]
        and "adapter/adapter_model.safetensors" in marker["files"]
    )
    state = json.loads((path / "trainer_state.json").read_text())
    assert (
        state["step"] == 16
        and set(state["position"]) == {"epoch", "index"}
        and len(state["dataset_sha256"]) == 64
    )
    _assert_same_weights(path / "adapter", reference)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 17))
    row = json.loads(lines[-1])
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "eta_s", "trained_tokens"} <= set(row) and row[
        "eta_s"
    ] == 0


def test_stop_then_resume_matches_uninterrupted(
    tiny_model_dir: Path, tmp_path: Path, reference: Path
) -> None:
    control = Control()
    config = _config(tiny_model_dir, tmp_path, "stopped")

    def progress(event: ProgressEvent) -> None:
        if event.kind == "step" and event.step == 5:
            control.stop()

    first = train(config, control=control, progress=progress)
    assert first.stopped and first.step == 5 and first.adapter_dir is None
    assert latest_checkpoint(config.output_dir).step == 5  # stop wrote a checkpoint at once
    assert control.state() == "run"  # the stop was consumed
    second = train(config, control=control)
    assert second.resumed_from_step == 5 and second.step == 16 and not second.stopped
    _assert_same_weights(second.adapter_dir, reference)
    steps = [json.loads(x)["step"] for x in second.metrics_path.read_text().splitlines()]
    assert steps == list(range(1, 17))  # no step logged twice
    # Running a finished run again changes nothing.
    again = train(config, control=control)
    assert again.step == 16 and again.resumed_from_step == 16
    _assert_same_weights(again.adapter_dir, reference)


def test_torn_and_corrupt_checkpoints_are_skipped(
    tiny_model_dir: Path, tmp_path: Path, reference: Path
) -> None:
    control = Control()
    config = _config(tiny_model_dir, tmp_path, "torn", keep_checkpoints=5)
    train(
        config,
        control=control,
        progress=lambda e: control.stop() if e.kind == "step" and e.step == 7 else None,
    )
    out = config.output_dir
    assert [s for s, _ in list_checkpoints(out)] == [3, 6, 7]
    # checkpoint-7: a file changed after commit (hash mismatch); checkpoint-10: renamed but never marked.
    (out / "checkpoint-7" / "optimizer.pt").write_bytes(b"garbage")
    torn = out / "checkpoint-10"
    torn.mkdir()
    (torn / "trainer_state.json").write_text("{")
    (out / ".tmp-checkpoint-12-999").mkdir()
    assert latest_checkpoint(out).step == 6
    result = train(config, control=control)
    assert result.resumed_from_step == 6 and result.step == 16
    assert (
        not torn.exists()
        and not (out / ".tmp-checkpoint-12-999").exists()
        and not (out / "checkpoint-7").exists()
    )
    _assert_same_weights(result.adapter_dir, reference)


def test_pause_holds_between_steps_without_spinning(tiny_model_dir: Path, tmp_path: Path) -> None:
    control = Control()
    events: list[ProgressEvent] = []
    paused = threading.Event()

    def progress(event: ProgressEvent) -> None:
        events.append(event)
        if event.kind == "step" and event.step == 2:
            control.pause()
        if event.kind == "paused":
            paused.set()

    box: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: box.setdefault(
            "result",
            train(
                _config(tiny_model_dir, tmp_path, "pause", max_steps=4), control=control, progress=progress
            ),
        )
    )
    worker.start()
    assert paused.wait(60), "the run never paused"
    held_at = len(events)
    cpu0 = time.process_time()
    time.sleep(0.6)
    assert worker.is_alive() and len(events) == held_at  # nothing happened while paused
    assert time.process_time() - cpu0 < 0.3  # it sleeps: no busy loop
    assert events[-1].step == 2
    control.resume()
    worker.join(60)
    kinds = [e.kind for e in events]
    assert kinds.index("paused") < kinds.index("resumed") < kinds.index("done")
    assert box["result"].step == 4 and not box["result"].stopped


def test_file_control_round_trip(tmp_path: Path) -> None:
    control = FileControl(tmp_path)
    assert control.state() == "run" and read_control(tmp_path) is None
    write_control(tmp_path, "pause")
    assert control.state() == "pause"
    write_control(tmp_path, "stop")
    assert control.state() == "stop"
    control.acknowledge_stop()  # a later run must not stop at once
    assert read_control(tmp_path) == "run" and control.state() == "run"
    control.stop()  # in-process stop (SIGTERM in the script) wins over the file
    assert control.state() == "stop"
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files
    with pytest.raises(ValueError):
        write_control(tmp_path, "explode")  # type: ignore[arg-type]


def test_resume_refuses_a_changed_dataset(tiny_model_dir: Path, tmp_path: Path) -> None:
    from learnloop.errors import ConfigError

    control = Control()
    config = _config(tiny_model_dir, tmp_path, "changed", max_steps=4)
    train(
        config,
        control=control,
        progress=lambda e: control.stop() if e.kind == "step" and e.step == 3 else None,
    )
    with open(config.dataset, "a") as fh:
        fh.write(
            json.dumps(
                {"messages": [{"role": "user", "content": "new"}, {"role": "assistant", "content": "row"}]}
            )
            + "\n"
        )
    with pytest.raises(ConfigError, match="different dataset"):
        train(config, control=control)


def _spawn(config: TrainConfig, tmp: Path) -> subprocess.Popen:
    cfg_file = tmp / "cfg.json"
    cfg_file.write_text(config.model_dump_json())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, "-m", "learnloop.training.run", "--config", str(cfg_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _signal_after_first_checkpoint(proc: subprocess.Popen, signum: int) -> list[dict[str, Any]]:
    """Send ``signum`` right after the first committed checkpoint (mid-run); return every event seen."""
    events: list[dict[str, Any]] = []
    sent = False
    try:
        for line in proc.stdout:  # one JSON event per line, until the process exits
            events.append(json.loads(line))
            if events[-1]["kind"] == "checkpoint" and not sent:
                os.kill(proc.pid, signum)
                sent = True
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sent, "the run finished before its first checkpoint was seen"
    return events


def test_sigterm_stops_cleanly_with_a_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = _config(tiny_model_dir, tmp_path, "term", max_steps=200, checkpoint_every=3)
    proc = _spawn(config, tmp_path)
    events = _signal_after_first_checkpoint(proc, signal.SIGTERM)
    assert proc.returncode == 0 and events[-1]["kind"] == "stopped", [e["kind"] for e in events]
    stopped_at = events[-1]["step"]
    assert 3 <= stopped_at < 200
    assert latest_checkpoint(config.output_dir).step == stopped_at  # the stop itself checkpointed
    assert not (config.output_dir / "adapter").exists()


def test_kill_9_then_resume_matches_uninterrupted(
    tiny_model_dir: Path, tmp_path: Path, reference: Path
) -> None:
    config = _config(tiny_model_dir, tmp_path, "killed")
    proc = _spawn(config, tmp_path)
    _signal_after_first_checkpoint(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    out = config.output_dir
    assert not (out / "adapter").exists()
    killed_at = latest_checkpoint(out).step
    assert 3 <= killed_at < 16
    result = train(config, control=Control())
    assert result.resumed_from_step == killed_at and result.step == 16
    _assert_same_weights(result.adapter_dir, reference)
