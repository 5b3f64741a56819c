"""The step loop: optimizer, scheduler, gradient accumulation and clipping, control, checkpoints,
metrics and progress. Algorithms plug in as an ``Objective``; this module knows none of them.

Single process by default. Under ``accelerate launch`` / ``torchrun`` (WORLD_SIZE > 1) each rank
takes every world-th micro-batch and the LoRA gradients are averaged with an all-reduce before
clipping (adapters are small, so this costs little and keeps the objective's model unwrapped:
objectives call sub-modules and ``disable_adapter()``, which a DDP wrapper would not see).
Rank 0 writes checkpoints, metrics and the final adapter.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from learnloop import paths
from learnloop.durable import fsync_dir, fsync_tree
from learnloop.errors import ConfigError, Conflict, NoLearningSignal
from learnloop.models import pick_device
from learnloop.training import checkpoint as ckpt_mod
from learnloop.training.config import TrainConfig
from learnloop.training.control import Control, FileControl, State
from learnloop.training.data import BatchStream, Position, load_examples
from learnloop.training.lora import load_training_model, trainable_parameters
from learnloop.training.memory import keep_freed_memory
from learnloop.training.objective import get_objective

# Kept here for the CLI and older callers; paths.py owns the names.
METRICS_FILE = paths.METRICS_FILE
ADAPTER_DIR = paths.ADAPTER_DIR


@dataclass
class ProgressEvent:
    """What the loop reports. kind: start | step | checkpoint | paused | resumed | stopped | done |
    no_signal (a rollout run found nothing to learn; the run then raises NoLearningSignal)."""

    kind: str
    step: int
    total_steps: int
    epoch: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    path: Path | None = None
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path) if self.path else None
        return d


@dataclass
class TrainResult:
    output_dir: Path
    adapter_dir: Path | None  # None when the run stopped before finishing
    step: int
    total_steps: int
    stopped: bool
    resumed_from_step: int | None
    last_metrics: dict[str, float]
    metrics_path: Path
    checkpoint: Path | None
    examples: int
    skipped: int


class _Dist:
    """Rank bookkeeping; a no-op in a single process."""

    def __init__(self, config: TrainConfig) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.world > 1:
            from accelerate import PartialState

            self.state = PartialState(cpu=config.device == "cpu")
            self.rank, self.device = self.state.process_index, self.state.device
        else:
            self.rank, self.device = 0, pick_device(config.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()

    def average_grads(self, params: list[torch.nn.Parameter]) -> None:
        if self.world > 1:
            for p in params:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.AVG)

    def agree(self, state: State) -> State:
        """Every rank must pause/stop together: rank 0's reading of the control wins."""
        if self.world == 1:
            return state
        box = [state]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


class _RunLock:
    """One trainer per output_dir: a second one would interleave checkpoints."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / paths.RUN_LOCK_FILE

    def __enter__(self) -> _RunLock:
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise Conflict(f"Another training run is using {self.path.parent}.") from None
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    from transformers import get_scheduler

    name = "constant_with_warmup" if config.lr_scheduler == "constant" else config.lr_scheduler
    return get_scheduler(
        name, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=total_steps
    )


def _trim_metrics(path: Path, upto_step: int) -> None:
    """Drop metric lines past the checkpoint we resume from (the killed run's steps are redone)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= upto_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line torn by a crash
    path.write_text("".join(k + "\n" for k in kept))


def _save_final(
    output_dir: Path, model: Any, tokenizer: Any, optimizer: torch.optim.Optimizer, config: TrainConfig
) -> Path:
    """Write the adapter (+ tokenizer, optimizer state, config) to a temp folder and swap it in, so
    readers never see a half-written ``adapter``."""
    final = output_dir / ADAPTER_DIR
    tmp = output_dir / f".tmp-{ADAPTER_DIR}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / paths.OPTIMIZER_FILE)  # for init_adapter + keep_optimizer_state
    (tmp / paths.TRAIN_CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    from learnloop.models.formats import write_adapter_format

    write_adapter_format(tmp, algorithm=config.algorithm, base_model=config.base_model)
    fsync_tree(tmp)
    if final.exists():
        old = output_dir / f".old-{ADAPTER_DIR}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(output_dir)
    return final


def _load_eval_set(config: TrainConfig, objective: Any) -> list[Any] | None:
    """The held-out examples whose loss is logged every ``eval_every`` steps (None: no evaluation)."""
    if config.eval_every is None and config.eval_dataset is None:
        return None
    if config.eval_every is None or config.eval_dataset is None:
        raise ConfigError("eval_every and eval_dataset go together: set both, or neither.")
    if getattr(objective, "online", False):
        raise ConfigError(
            "A held-out loss needs stored completions; online GRPO samples its own, so it has none."
        )
    return load_examples(config.eval_dataset, objective).examples


def _eval_loss(
    model: Any, objective: Any, examples: list[Any], batch_size: int, device: torch.device
) -> float:
    """Mean loss over the held-out examples, without gradients or dropout (and no RNG drawn, so
    resumes stay exact)."""
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for i in range(0, len(examples), batch_size):
                chunk = examples[i : i + batch_size]
                out = objective.compute(model, _to_device(objective.collate(chunk), device))
                total += float(out.loss) * len(chunk)
                count += len(chunk)
    finally:
        model.train()
    return total / count


def train_loop(
    config: TrainConfig,
    *,
    control: Control | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> TrainResult:
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Only rank 0 takes the lock: the other ranks of the same run share the folder on purpose.
    lock = _RunLock(output_dir) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()
    with lock:
        return _train(config, output_dir, control or FileControl(output_dir), progress or (lambda e: None))


@dataclass
class _Run:
    """One training run's state, built by ``_setup`` and advanced by ``_step``."""

    config: TrainConfig
    output_dir: Path
    control: Control
    emit: Callable[[ProgressEvent], None]
    dist: _Dist
    model: Any
    tokenizer: Any
    objective: Any
    dataset: Any
    stream: BatchStream
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    total: int
    resumed_from: ckpt_mod.Checkpoint | None
    eval_set: list[Any] | None = None
    step: int = 0
    last: dict[str, float] = field(default_factory=dict)
    last_checkpoint: Path | None = None
    started: float = field(default_factory=time.perf_counter)
    session_steps: int = 0

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / paths.METRICS_FILE

    def event(self, kind: str, **kw: Any) -> None:
        if self.dist.main:
            self.emit(
                ProgressEvent(
                    kind=kind,
                    step=self.step,
                    total_steps=self.total,
                    epoch=self.stream.epoch_progress(),
                    elapsed_s=time.perf_counter() - self.started,
                    **kw,
                )
            )


def _train(
    config: TrainConfig, output_dir: Path, control: Control, emit: Callable[[ProgressEvent], None]
) -> TrainResult:
    run = _setup(config, output_dir, control, emit)
    while run.step < run.total:
        if _stop_requested(run):
            if run.step > 0:
                _checkpoint(run)
            control.acknowledge_stop()
            run.event("stopped", path=run.last_checkpoint)
            return _result(run, adapter_dir=None)
        try:
            _step(run)
        except NoLearningSignal as exc:
            # A supervisor reads this event (and the script's exit status 3) as "do not retry as is".
            run.event("no_signal", message=str(exc), metrics=dict(exc.stats))
            raise
        if run.step % config.checkpoint_every == 0 or run.step == run.total:
            _checkpoint(run)
    return _finish(run)


def _seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


def _setup(
    config: TrainConfig, output_dir: Path, control: Control, emit: Callable[[ProgressEvent], None]
) -> _Run:
    """Model, data, optimizer and schedule; the state of the newest committed checkpoint, if any."""
    keep_freed_memory()
    dist = _Dist(config)
    model, tokenizer = load_training_model(config, dist.device)
    objective = get_objective(config.algorithm, config, tokenizer)
    dataset = load_examples(config.dataset, objective)
    eval_set = _load_eval_set(config, objective)
    _seed(config.seed)
    stream = BatchStream(
        dataset,
        config.batch_size,
        seed=config.seed,
        group_by_length=config.length_grouping,
        rank=dist.rank,
        world=dist.world,
    )
    total = config.max_steps or max(
        1, math.ceil(config.epochs * stream.batches_per_epoch / config.grad_accum)
    )
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)

    if dist.main:
        ckpt_mod.clean_torn(output_dir)
    dist.barrier()
    resume = ckpt_mod.latest_checkpoint(output_dir)
    if resume is None and config.init_adapter is not None and config.keep_optimizer_state:
        _load_optimizer_moments(config, optimizer)
    scheduler = _scheduler(config, optimizer, total)
    run = _Run(
        config=config,
        output_dir=output_dir,
        control=control,
        emit=emit,
        dist=dist,
        model=model,
        tokenizer=tokenizer,
        objective=objective,
        dataset=dataset,
        stream=stream,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        total=total,
        resumed_from=resume,
        eval_set=eval_set,
    )
    if resume is not None:
        ckpt_mod.check_format(resume)
        state = resume.state
        if state.get("dataset_sha256") != dataset.sha256 or state.get("algorithm") != config.algorithm:
            raise ConfigError(
                f"{resume.path} was written for a different dataset or algorithm; resume needs the same ones "
                f"(or use a new output_dir)."
            )
        ckpt_mod.load_training_state(resume, model, optimizer, scheduler)
        if "objective" in state and hasattr(objective, "load_state_dict"):
            objective.load_state_dict(state["objective"])
        run.step = resume.step
        run.last_checkpoint = resume.path
        stream.position = Position(**state["position"])
    if dist.main:
        if resume:
            _trim_metrics(run.metrics_path, run.step)
        else:  # lines from a run killed before its first checkpoint describe steps that will be redone
            run.metrics_path.write_text("")
        (output_dir / paths.TRAIN_CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    model.train()
    how = f"resumed from {resume.path.name}" if resume else "fresh start"
    run.event(
        "start",
        message=f"{how}; {len(dataset.examples)} examples ({dataset.skipped} skipped), device {dist.device}",
    )
    return run


def _load_optimizer_moments(config: TrainConfig, optimizer: torch.optim.Optimizer) -> None:
    opt_file = Path(config.init_adapter) / paths.OPTIMIZER_FILE
    if not opt_file.exists():
        raise ConfigError(f"keep_optimizer_state is set but {opt_file} does not exist.")
    optimizer.load_state_dict(torch.load(opt_file, weights_only=False))
    for group in optimizer.param_groups:  # the moments carry over; the hyper-parameters are this run's
        group["lr"] = group["initial_lr"] = config.learning_rate
        group["weight_decay"] = config.weight_decay


def _stop_requested(run: _Run) -> bool:
    """Read the control; while it says pause, wait here. True when it says stop."""
    state = run.dist.agree(run.control.state())
    if state == "pause":
        run.event("paused")
        while (state := run.dist.agree(run.control.state())) == "pause":
            run.control.wait(1.0)
        if state != "stop":
            run.event("resumed")
    return state == "stop"


def _step(run: _Run) -> None:
    """One optimizer step over ``grad_accum`` micro-batches; its metrics go to metrics.jsonl."""
    config = run.config
    t0 = time.perf_counter()
    tokens, loss_sum, sums = 0, 0.0, {}
    for _ in range(config.grad_accum):
        batch = _to_device(run.objective.collate(run.stream.next()), run.dist.device)
        out = run.objective.compute(run.model, batch)
        (out.loss / config.grad_accum).backward()
        loss_sum += float(out.loss.detach())
        tokens += out.tokens
        for k, v in out.metrics.items():
            sums[k] = sums.get(k, 0.0) + v
    run.dist.average_grads(run.params)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.params, config.max_grad_norm))
    lr = run.scheduler.get_last_lr()[0]
    if math.isfinite(grad_norm):
        run.optimizer.step()
    # else: a non-finite gradient would poison the adapter; skip this update, keep the schedule.
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    run.session_steps += 1

    took = time.perf_counter() - t0
    per_step = (time.perf_counter() - run.started) / run.session_steps
    run.last = {
        "step": run.step,
        "loss": loss_sum / config.grad_accum,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens": tokens,
        "tokens_per_s": tokens * run.dist.world / took if took > 0 else 0.0,
        "eta_s": per_step * (run.total - run.step),
        "epoch": run.stream.epoch_progress(),
        **{k: v / config.grad_accum for k, v in sums.items()},
    }
    if (
        run.eval_set is not None
        and run.dist.main
        and (run.step % config.eval_every == 0 or run.step == run.total)
    ):
        run.last["eval_loss"] = _eval_loss(
            run.model, run.objective, run.eval_set, config.batch_size, run.dist.device
        )
    if run.dist.main:
        with open(run.metrics_path, "a") as fh:
            fh.write(json.dumps(run.last) + "\n")
    run.event("step", metrics=dict(run.last))


def _checkpoint(run: _Run) -> None:
    """Rank 0 writes and commits ``checkpoint-<step>``; every rank waits for it."""
    if run.dist.main:
        state = {
            "position": asdict(run.stream.position),
            "dataset_sha256": run.dataset.sha256,
            "algorithm": run.config.algorithm,
            "metrics": run.last,
        }
        if hasattr(run.objective, "state_dict"):  # what an objective counts across steps (rollouts)
            state["objective"] = run.objective.state_dict()
        run.last_checkpoint = ckpt_mod.save_checkpoint(
            run.output_dir, run.step, run.model, run.optimizer, run.scheduler, state
        )
        ckpt_mod.prune(run.output_dir, run.config.keep_checkpoints)
        run.event("checkpoint", path=run.last_checkpoint)
    run.dist.barrier()


def _finish(run: _Run) -> TrainResult:
    """The last checkpoint (if the loop did not just write it) and the final adapter."""
    if not (paths.checkpoint_dir(run.output_dir, run.step) / paths.CHECKPOINT_MARKER).exists():
        _checkpoint(run)  # resumed at the end, or total changed
    adapter_dir = run.output_dir / paths.ADAPTER_DIR
    if run.dist.main:
        adapter_dir = _save_final(run.output_dir, run.model, run.tokenizer, run.optimizer, run.config)
    run.dist.barrier()
    run.event("done", path=adapter_dir, metrics=dict(run.last))
    return _result(run, adapter_dir=adapter_dir)


def _result(run: _Run, *, adapter_dir: Path | None) -> TrainResult:
    return TrainResult(
        output_dir=run.output_dir,
        adapter_dir=adapter_dir,
        step=run.step,
        total_steps=run.total,
        stopped=adapter_dir is None,
        resumed_from_step=run.resumed_from.step if run.resumed_from else None,
        last_metrics=run.last,
        metrics_path=run.metrics_path,
        checkpoint=run.last_checkpoint,
        examples=len(run.dataset.examples),
        skipped=run.dataset.skipped,
    )
