"""What a claimed job does. A loop's cycle is a chain of stages, each recorded on the job's
``result`` as it completes, so a retried or taken-over job skips what is already done:

    dataset -> length guardrail -> train (resumes from its checkpoints) -> register -> evaluate
        -> gate -> promote

Registering looks up a version already registered for this job first, and promoting looks up the
alias log first, so a daemon killed between a stage and its record never makes a duplicate.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from learnloop.config import Settings
from learnloop.config.loops import LoopConfig
from learnloop.daemon import loops as loops_mod
from learnloop.daemon import queue
from learnloop.daemon.log import emit, write_line
from learnloop.daemon.supervisor import Supervisor
from learnloop.errors import ConfigError, LearnloopError, ValidationFailed
from learnloop.paths import data_dir
from learnloop.store.db import Database
from learnloop.training.config import validate_config

log = logging.getLogger("learnloop.daemon")


def registry_available() -> bool:
    return importlib.util.find_spec("learnloop.registry") is not None


def evaluation_available() -> bool:
    return importlib.util.find_spec("learnloop.evaluation") is not None


class Refused(LearnloopError):
    """The job cannot succeed by retrying (bad data or config): it fails at once with this reason."""


class _Stop(Exception):
    """The run was stopped, skipped, cancelled, lost or interrupted: the job was released, not failed."""


class _ShuttingDown(Exception):
    """The daemon is stopping in the middle of a stage that has no checkpoint (evaluation)."""


def _stage(ctx: Context, job: queue.JobInfo, stage: str, message: str | None = None, **kw: Any) -> None:
    """Mark the job's stage (the dashboard's job page shows it) and say so in the log."""
    queue.set_stage(ctx.db, job.id, ctx.owner, stage, **kw)
    if message:  # a stage's start or outcome: an event (the job's page lists it) and a log line
        emit(ctx.db, f"cycle.{stage}", message, loop=job.loop, job_id=job.id)


@dataclass
class Context:
    db: Database
    settings: Settings
    owner: str
    shutdown: threading.Event


class LeaseKeeper:
    """Renews the job's lease every ``heartbeat_seconds`` from its own thread, whatever the job is doing
    (importing torch, building a large dataset, evaluating for minutes): the lease says the daemon is
    alive; the training watchdog, not the lease, judges whether the work moves."""

    def __init__(self, ctx: Context, job_id: int) -> None:
        self.ctx, self.job_id = ctx, job_id
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"learnloop-lease-{job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        cfg = self.ctx.settings.daemon
        while not self._done.wait(cfg.heartbeat_seconds):
            try:
                if (
                    queue.heartbeat(self.ctx.db, self.job_id, self.ctx.owner, lease_seconds=cfg.lease_seconds)
                    is None
                ):
                    self.lost.set()
                    return
            except Exception:  # noqa: BLE001 - the database is briefly away: try again next beat
                log.warning("lease renewal of job %s failed", self.job_id, exc_info=True)


def run_job(ctx: Context, job: queue.JobInfo) -> None:
    """Run one claimed job to its end state; never raises (a crash of the handler is a failed attempt)."""
    with LeaseKeeper(ctx, job.id):
        _run_job(ctx, job)


def _run_job(ctx: Context, job: queue.JobInfo) -> None:
    cfg = ctx.settings.daemon
    try:
        if job.kind == "train" and job.payload.get("loop"):
            _cycle(ctx, job)
        elif job.kind == "train":
            _plain_training(ctx, job)
        elif job.kind == "score":
            report = _score(ctx)
            queue.succeed(ctx.db, job.id, ctx.owner, {"scoring": report})
        elif job.kind == "evaluate":
            _evaluate_job(ctx, job)
        else:
            raise Refused(f"no handler for {job.kind} jobs in this daemon")
    except _Stop:
        pass
    except (Refused, ConfigError, ValidationFailed) as exc:
        queue.fail(ctx.db, job.id, ctx.owner, str(exc), retry=False)
        if job.loop:
            loops_mod.set_state(
                ctx.db, job.loop, "idle", {"outcome": "refused", "job_id": job.id, "reason": str(exc)}
            )
    except Exception as exc:  # noqa: BLE001 - any other crash is one failed attempt, retried with backoff
        log.exception("job %s failed", job.id)
        state = queue.fail(
            ctx.db,
            job.id,
            ctx.owner,
            f"{type(exc).__name__}: {exc}",
            output_tail=traceback.format_exc()[-4000:],
            backoff=cfg.retry_backoff,
            backoff_max=cfg.retry_backoff_max,
        )
        if job.loop and state == "failed":
            loops_mod.set_state(
                ctx.db, job.loop, "idle", {"outcome": "failed", "job_id": job.id, "reason": str(exc)}
            )


# -- training ------------------------------------------------------------------------------------


def _train(ctx: Context, job: queue.JobInfo, config: Any) -> dict[str, Any]:
    """Supervise one training run for ``job``; returns {adapter_dir, step, metrics}
    or releases/fails the job."""
    cfg = ctx.settings.daemon
    outcome = Supervisor(ctx.db, job.id, ctx.owner, ctx.settings, shutdown=ctx.shutdown, loop=job.loop).run(
        config
    )
    if outcome.kind == "done":
        return {
            "adapter_dir": outcome.adapter_dir,
            "step": outcome.step,
            "train_metrics": outcome.metrics,
            "checkpoint": outcome.checkpoint,
        }
    if outcome.kind == "stopped":
        queue.release(
            ctx.db, job.id, ctx.owner, reason="daemon shutting down" if ctx.shutdown.is_set() else "requested"
        )
        raise _Stop
    if outcome.kind == "lost":
        raise _Stop
    if outcome.kind == "no_signal":
        # The same prompts would tie again: not retried; the loop backs off (readiness "backoff").
        queue.update_result(ctx.db, job.id, ctx.owner, no_signal=True, no_signal_stats=outcome.metrics)
        queue.fail(ctx.db, job.id, ctx.owner, outcome.error, output_tail=outcome.output_tail, retry=False)
        if job.loop:
            loops_mod.set_state(
                ctx.db,
                job.loop,
                "idle",
                {
                    "outcome": "no_signal",
                    "job_id": job.id,
                    "reason": outcome.error,
                    "stats": outcome.metrics,
                },
            )
            emit(
                ctx.db,
                "cycle.no_signal",
                f"loop {job.loop}: {outcome.error}",
                level="warning",
                loop=job.loop,
                job_id=job.id,
                data={"stats": outcome.metrics},
            )
        raise _Stop
    # failed or stalled: retried from the newest committed checkpoint (a stall at once:
    # it had no fault of data).
    backoff = 0.0 if outcome.kind == "stalled" else cfg.retry_backoff
    state = queue.fail(
        ctx.db,
        job.id,
        ctx.owner,
        outcome.error,
        output_tail=outcome.output_tail,
        backoff=backoff,
        backoff_max=cfg.retry_backoff_max,
    )
    if job.loop and state == "failed":
        loops_mod.set_state(
            ctx.db, job.loop, "idle", {"outcome": "failed", "job_id": job.id, "reason": outcome.error}
        )
    raise _Stop


def _plain_training(ctx: Context, job: queue.JobInfo) -> None:
    data = dict(job.payload.get("config") or {})
    if not data:
        raise Refused("a train job needs payload.loop (a [[loops]] name) or payload.config (a TrainConfig)")
    data.setdefault("output_dir", str(data_dir(ctx.settings.data_dir).job_checkpoints(job.id)))
    config = validate_config(data, f"job {job.id}")
    out = _train(ctx, job, config)
    queue.succeed(
        ctx.db,
        job.id,
        ctx.owner,
        out,
        message=f"job {job.id} trained {out['step']} steps; adapter {out['adapter_dir']}",
    )


# -- a loop's cycle --------------------------------------------------------------------------------


def _cycle(ctx: Context, job: queue.JobInfo) -> None:
    import datetime as dt

    settings, db = ctx.settings, ctx.db
    loop = loops_mod.get_loop(settings, job.payload["loop"])
    loops_mod.check_lock(db, settings, loop)
    loops_mod.set_state(db, loop.name, "running")
    done = dict(job.result)
    base = loops_mod.base_model_of(settings, loop)

    cycle = f"loop {loop.name}: cycle {job.payload.get('cycle')} (job {job.id})"
    if "dataset_id" not in done:
        _stage(ctx, job, "dataset")
        since = job.payload.get("since")
        until = job.payload.get("until")
        info = _build(
            ctx,
            loop,
            base,
            dt.datetime.fromisoformat(since) if since else None,
            dt.datetime.fromisoformat(until) if until else None,
        )
        length = info.stats.get("length", {})
        step = {
            "dataset_id": info.id,
            "dataset_path": info.path,
            "examples": info.count,
            "dataset_hash": info.content_hash,
            "length": {
                k: length.get(k)
                for k in (
                    "max_length",
                    "p95",
                    "p99",
                    "max",
                    "truncated",
                    "truncated_share",
                    "suggested_max_length",
                    "advice",
                )
            },
        }
        if not queue.update_result(db, job.id, ctx.owner, **step):
            raise _Stop
        done.update(step)
        _warn_epochs(ctx, job, loop, info.count)
        emit(
            db,
            "dataset.built",
            f"{cycle}: dataset {info.id} built, {info.count} examples"
            + (
                f" (p95 {length.get('p95')} tokens, {length.get('truncated') or 0} truncated)"
                if length
                else ""
            ),
            loop=loop.name,
            job_id=job.id,
        )
        share = float(length.get("truncated_share") or 0.0)
        if share > loop.max_truncated_share:
            raise Refused(
                f"{length.get('truncated')} of {info.count} examples ({share:.0%}) exceed max_length "
                f"{length.get('max_length')} (allowed: {loop.max_truncated_share:.0%}); "
                f"{length.get('advice', '')} Dataset {info.id}: p95 {length.get('p95')}, "
                f"p99 {length.get('p99')}, max {length.get('max')} tokens."
            )

    if "adapter_dir" not in done:
        init, head_version = loops_mod.head_adapter(db, settings, loop)
        config = _train_config(ctx, job, loop, base, Path(done["dataset_path"]), init)
        out = _train(ctx, job, config)
        out.update(parent_version=head_version, init_adapter=str(init) if init else None)
        if not queue.update_result(db, job.id, ctx.owner, **out):
            raise _Stop
        done.update(out)

    version_id = done.get("version_id")
    gate: dict[str, Any] | None = done.get("gate")
    if registry_available() and version_id is None:
        _stage(ctx, job, "registering")
        version_id = _register(ctx, job, loop, base, done)
        queue.update_result(db, job.id, ctx.owner, version_id=version_id)
        done["version_id"] = version_id
    if version_id and evaluation_available() and gate is None:
        try:
            eval_id = done.get("evaluation_id") or _evaluate(ctx, job, loop, version_id)
        except _ShuttingDown:
            queue.release(db, job.id, ctx.owner, reason="daemon shutting down during evaluation")
            raise _Stop from None
        except (ValidationFailed, LearnloopError) as exc:
            # Nothing to evaluate on (no held-out examples): the version stays registered, unpromoted.
            eval_id = None
            gate = {"passed": False, "verdict": "inconclusive", "reasons": [f"not evaluated: {exc}"]}
            emit(
                db,
                "evaluation.skipped",
                f"{version_id} not evaluated: {exc}",
                level="warning",
                loop=loop.name,
                job_id=job.id,
                version_id=version_id,
            )
        else:
            queue.update_result(db, job.id, ctx.owner, evaluation_id=eval_id)
            gate = _gate(ctx, loop, eval_id)
            reasons = "; ".join(gate.get("reasons") or [])
            _stage(
                ctx,
                job,
                "gate",
                f"{cycle}: gate {gate.get('verdict')} for {version_id}"
                + (" (passed)" if gate.get("passed") else " (not promoted)")
                + (f": {reasons}" if reasons else ""),
            )
        queue.update_result(db, job.id, ctx.owner, gate=gate)
        done.update(evaluation_id=eval_id, gate=gate)
    promoted = done.get("promoted")
    if version_id and gate and gate.get("passed") and promoted is None:
        _stage(ctx, job, "promoting")
        promoted = _promote(ctx, job, loop, version_id, done.get("evaluation_id"), gate)
        queue.update_result(db, job.id, ctx.owner, promoted=promoted)

    advanced = gate is None or bool(gate.get("passed"))
    outcome = {
        "outcome": "succeeded",
        "version_id": version_id,
        "adapter_dir": done.get("adapter_dir"),
        "examples": done.get("examples"),
        "gate": gate,
        "promoted": promoted,
        "loss": (done.get("train_metrics") or {}).get("loss"),
    }
    loops_mod.record_cycle(db, settings, loop, job.id, outcome, head_version=version_id, advanced=advanced)
    what = f"version {version_id}" if version_id else f"adapter {done.get('adapter_dir')}"
    verdict = "" if gate is None else f"; gate {gate.get('verdict')}" + ("; promoted" if promoted else "")
    queue.succeed(
        db,
        job.id,
        ctx.owner,
        {"head": advanced},
        message=f"loop {loop.name}: cycle {job.payload.get('cycle')} trained {what} on "
        f"{done.get('examples')} examples{verdict}",
    )


def _warn_epochs(ctx: Context, job: queue.JobInfo, loop: LoopConfig, examples: int) -> None:
    """Readiness counted the examples before duplicates were removed: say so when the dataset the
    cycle trains on is small enough for more passes than ``triggers.max_epochs`` (it trains anyway)."""
    cap = loop.triggers.max_epochs
    planned = loop.planned_epochs(examples)
    if cap is None or planned is None or planned <= cap:
        return
    emit(
        ctx.db,
        "cycle.many_epochs",
        f"loop {loop.name}: {loop.train['max_steps']} training steps over {examples} examples (after "
        f"duplicates were removed) make {planned:.1f} epochs, more than triggers.max_epochs = {cap:g}; "
        "lower train.max_steps if the versions memorise their data",
        level="warning",
        loop=loop.name,
        job_id=job.id,
    )


def _build(ctx: Context, loop: LoopConfig, base: str, since: Any, until: Any) -> Any:
    from learnloop.datasets import build_dataset
    from learnloop.models import resolve_base_model

    s = ctx.settings
    s = s.model_copy(update={"datasets": s.datasets.model_copy(update={"max_length": loop.max_length})})
    # The base model's own tokenizer counts the tokens training will see.
    tokenizer = str(resolve_base_model(base, s.data_dir))
    return build_dataset(
        ctx.db,
        loop.dataset_kind,
        loops_mod.dataset_filters(loop, since, until),
        settings=s,
        tokenizer=tokenizer,
        name=f"{loop.name}-cycle",
    )


def _train_config(
    ctx: Context, job: queue.JobInfo, loop: LoopConfig, base: str, dataset: Path, init: Path | None
) -> Any:
    data: dict[str, Any] = {
        "device": ctx.settings.training.device,
        **loop.train,
        "algorithm": loop.train_algorithm,
        "base_model": base,
        "dataset": str(dataset),
        "output_dir": str(data_dir(ctx.settings.data_dir).job_checkpoints(job.id)),
        "rollout": loop.rollout_settings(loops_mod.rollout_scoring(ctx.settings)),
    }
    if init is not None:
        data["init_adapter"] = str(init)
        data["keep_optimizer_state"] = (init / "optimizer.pt").is_file()
    return validate_config(data, f"loop {loop.name}")


def _register(ctx: Context, job: queue.JobInfo, loop: LoopConfig, base: str, done: dict[str, Any]) -> str:
    from learnloop import registry
    from learnloop.store.models import ModelVersion

    with ctx.db.read_session() as s:
        existing = s.scalars(select(ModelVersion.id).where(ModelVersion.job_id == job.id).limit(1)).first()
    if existing:
        return existing  # registered before a crash cut the record short
    config = dict(loop.train)
    return registry.register_version(
        ctx.db,
        ctx.settings,
        adapter_dir=Path(done["adapter_dir"]),
        base_model=base,
        parent_id=done.get("parent_version"),
        dataset_id=done.get("dataset_id"),
        job_id=job.id,
        algorithm=loop.algorithm,
        config=config,
        metrics=done.get("train_metrics") or {},
        loop=loop.name,
        note=f"cycle {job.payload.get('cycle')}",
    )


def _evaluate(ctx: Context, job: queue.JobInfo, loop: LoopConfig, version_id: str) -> int:
    from learnloop import evaluation
    from learnloop.store.models import Evaluation

    with ctx.db.read_session() as s:
        existing = s.scalars(
            select(Evaluation.id)
            .where(Evaluation.candidate_id == version_id)
            .order_by(Evaluation.id.desc())
            .limit(1)
        ).first()
    if existing:
        return int(existing)
    told = [-1]
    _stage(ctx, job, "evaluating", f"loop {loop.name}: evaluating {version_id} (job {job.id})")

    def progress(k: int, n: int) -> None:
        if ctx.shutdown.is_set():
            raise _ShuttingDown  # evaluation keeps no checkpoint: the next daemon evaluates again
        quarter = k * 4 // n if n else 0
        if quarter > told[0]:  # the database and the log hear of every quarter, not every answer
            told[0] = quarter
            _stage(ctx, job, "evaluating", done=k, total=n)
            if k:
                write_line(
                    "cycle.evaluating",
                    f"loop {loop.name}: evaluating {version_id}: {k}/{n} examples answered",
                    loop=loop.name,
                    job=job.id,
                )

    return int(
        evaluation.evaluate(
            ctx.db,
            ctx.settings,
            candidate=version_id,
            baseline="serving",
            scenario=loop.scenario,
            limit=loop.eval_limit,
            progress=progress,
        )
    )


def _gate(ctx: Context, loop: LoopConfig, eval_id: int) -> dict[str, Any]:
    from learnloop import evaluation
    from learnloop.store.models import Evaluation

    with ctx.db.read_session() as s:
        row = s.get(Evaluation, eval_id)
        metrics = dict(row.metrics or {}) if row else {}
        stored = dict(row.gate or {}) if row else {}
    if "passed" in stored:
        # The verdict evaluate() stored (gated by policy_for(settings, the version's loop)): one verdict for
        # the version, its evaluation, this cycle and the registry's promote, which checks the same record.
        reasons = list(stored.get("reasons") or [])
        return {"passed": bool(stored["passed"]), "verdict": stored.get("verdict"), "reasons": reasons}
    # [gate] overridden by the loop's own gate = {...}: the evaluation stage's rule,
    # not the loop's keys alone.
    verdict = evaluation.gate(metrics, evaluation.policy_for(ctx.settings, loop.name))
    return {"passed": bool(verdict.passed), "verdict": verdict.verdict, "reasons": list(verdict.reasons)}


def _promote(
    ctx: Context,
    job: queue.JobInfo,
    loop: LoopConfig,
    version_id: str,
    eval_id: int | None,
    gate: dict[str, Any],
) -> bool:
    from learnloop import registry
    from learnloop.store.models import AliasEvent

    with ctx.db.read_session() as s:
        already = s.scalars(
            select(AliasEvent.id).where(AliasEvent.alias == loop.alias, AliasEvent.to_version == version_id)
        ).first()
    if already:
        return True
    if not loop.auto_promote:
        emit(
            ctx.db,
            "version.held",
            f"{version_id} passed the gate; auto_promote is off for loop {loop.name}: "
            f"`learnloop promote {version_id}` serves it",
            loop=loop.name,
            job_id=job.id,
            version_id=version_id,
        )
        return False
    # Read right before promoting, so a freeze takes effect within the second it is set.
    if queue.get_control(ctx.db, "daemon.frozen"):
        emit(
            ctx.db,
            "version.held",
            f"{version_id} passed the gate but the daemon is frozen: not promoted",
            loop=loop.name,
            job_id=job.id,
            version_id=version_id,
        )
        return False
    from learnloop.daemon import canary

    if canary.wanted(ctx.db, ctx.settings, loop.alias, loop.name):
        # The alias serves a teacher upstream: the version takes its traffic in canary steps.
        return (
            canary.start(ctx.db, ctx.settings, loop.alias, version_id, loop=loop.name, evaluation_id=eval_id)
            != "held"
        )
    registry.promote(
        ctx.db,
        ctx.settings,
        version_id,
        alias=loop.alias,
        actor="daemon",
        reason=f"loop {loop.name} cycle {job.payload.get('cycle')}: gate {gate.get('verdict')}",
        evaluation_id=eval_id,
    )
    write_line(
        "version.promoted",
        f"loop {loop.name}: {loop.alias} now serves {version_id}",
        loop=loop.name,
        job=job.id,
        version=version_id,
    )
    return True


# -- other kinds ------------------------------------------------------------------------------------


def _score(ctx: Context) -> dict[str, Any]:
    from learnloop.scoring import apply_rewards

    return apply_rewards(ctx.db, ctx.settings.scoring).as_dict()


def _evaluate_job(ctx: Context, job: queue.JobInfo) -> None:
    if not evaluation_available():
        raise Refused("the evaluation stage is not installed in this learnloop")
    from learnloop import evaluation

    candidate = job.payload.get("candidate")
    if not candidate:
        raise Refused("an evaluate job needs payload.candidate (a version id)")
    eval_id = evaluation.evaluate(
        ctx.db,
        ctx.settings,
        candidate=candidate,
        baseline=job.payload.get("baseline", "serving"),
        scenario=job.payload.get("scenario"),
        limit=job.payload.get("limit"),
    )
    queue.succeed(ctx.db, job.id, ctx.owner, {"evaluation_id": eval_id})
