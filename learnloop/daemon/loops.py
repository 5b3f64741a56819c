"""Loop triggers: readiness checks with reasons, when a cycle is due, config locks and ``loops status``.

A check counts the examples a cycle would train on now (the dataset builder run without writing),
then decides: the count threshold, ``max_interval``, ``daily_at`` and a reward drop of served
traffic can each fire a cycle; the readiness checks (held-out examples, group sizes, reward
variance, free disk, the base model) must all pass first. The cycle job's idempotency key is
``loop:<name>:cycle:<n>``, so two daemons checking at once queue it once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from learnloop.config import Settings
from learnloop.daemon import queue
from learnloop.daemon.config import LoopConfig
from learnloop.daemon.log import emit
from learnloop.errors import ConfigError, Conflict, LearnloopError, NotFound
from learnloop.paths import data_dir
from learnloop.store.db import Database
from learnloop.store.models import (
    Alias,
    Evaluation,
    Job,
    JobKind,
    JobState,
    LoopState,
    Source,
    Trajectory,
    utcnow,
)

UNIT = {"sft": "traces", "dpo": "pairs", "grpo": "groups"}


@dataclass
class Check:
    """One readiness check's result: it passed or not, and the sentence a person reads."""

    name: str
    ok: bool
    reason: str


@dataclass
class Decision:
    loop: str
    fire: bool
    ready: bool
    new_examples: int
    triggers: list[str] = field(default_factory=list)  # what would fire it
    checks: list[Check] = field(default_factory=list)
    since: str | None = None

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks] + self.triggers

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = self.reasons
        return d


def get_loop(settings: Settings, name: str) -> LoopConfig:
    for loop in settings.loops:
        if loop.name == name:
            return loop
    names = ", ".join(lp.name for lp in settings.loops) or "none configured"
    raise NotFound(f"No loop named {name!r} in learnloop.toml ([[loops]]: {names}).")


def base_model_of(settings: Settings, loop: LoopConfig) -> str:
    return loop.base_model or settings.training.base_model


def _eligible(
    db: Database, settings: Settings, loop: LoopConfig, since: dt.datetime | None, until: dt.datetime
) -> tuple[int, list[float], int]:
    """(examples a cycle would get, their rewards, groups with reward variance) — the builder run dry."""
    from learnloop.datasets.builders import BUILDERS, BuildReport
    from learnloop.datasets.filters import parse_filters

    f = parse_filters(dataset_filters(loop, since, until)).resolved(loop.algorithm, settings.datasets)
    if f.replay_fraction:
        f = f.model_copy(update={"replay_fraction": 0.0})
    count, rewards, varied = 0, [], 0
    with db.read_session() as s:
        for item in BUILDERS[loop.algorithm](
            s, f, settings.scoring.weights, BuildReport(), settings.datasets.chunk_size
        ):
            count += 1
            if item.reward is not None:
                rewards.append(item.reward)
            r = item.record.get("rewards") if loop.algorithm == "grpo" else None
            if r and len(set(r)) > 1:
                varied += 1
    return count, rewards, varied


def dataset_filters(loop: LoopConfig, since: dt.datetime | None, until: dt.datetime | None) -> dict[str, Any]:
    f: dict[str, Any] = {
        **loop.dataset,
        "scenario": loop.scenario,
        "sources": list(loop.sources),
        "tags": list(loop.tags),
    }
    if since is not None:
        f["since"] = since
    if until is not None:
        f["until"] = until
    if loop.algorithm in ("dpo", "grpo") and loop.triggers.min_group_size and "min_group_size" not in f:
        f["min_group_size"] = loop.triggers.min_group_size
    return f


def _holdout_count(db: Database, settings: Settings, loop: LoopConfig) -> int:
    from learnloop.datasets.builders import BUILDERS, BuildReport
    from learnloop.datasets.filters import parse_filters

    f = parse_filters({"scenario": loop.scenario, "sources": list(loop.sources), "tags": list(loop.tags)})
    f = f.resolved("holdout", settings.datasets)
    with db.read_session() as s:
        return sum(
            1
            for _ in BUILDERS["holdout"](
                s, f, settings.scoring.weights, BuildReport(), settings.datasets.chunk_size
            )
        )


def last_cycle(db: Database, loop: str) -> Job | None:
    """The loop's newest succeeded cycle job (its payload's ``until`` is the next one's ``since``)."""
    with db.read_session() as s:
        return s.scalars(
            select(Job)
            .where(Job.loop == loop, Job.kind == JobKind.train, Job.state == JobState.succeeded)
            .order_by(Job.finished_at.desc(), Job.id.desc())
            .limit(1)
        ).first()


def active_job(db: Database, loop: str) -> Job | None:
    with db.read_session() as s:
        return s.scalars(
            select(Job).where(Job.loop == loop, Job.state.in_(queue.ACTIVE)).order_by(Job.id).limit(1)
        ).first()


def failed_cycles(db: Database, loop: str) -> tuple[int, dt.datetime | None]:
    """How many of the loop's newest finished cycles failed in a row, and when the last one ended."""
    with db.read_session() as s:
        rows = s.execute(
            select(Job.state, Job.finished_at)
            .where(Job.loop == loop, Job.kind == JobKind.train, Job.finished_at.is_not(None))
            .order_by(Job.finished_at.desc(), Job.id.desc())
            .limit(20)
        ).all()
    n = 0
    for state, _ in rows:
        if state != JobState.failed:
            break
        n += 1
    return n, (rows[0][1] if n else None)


def _since(db: Database, loop: LoopConfig) -> dt.datetime | None:
    if not loop.incremental:
        return None
    prev = last_cycle(db, loop.name)
    until = (prev.payload or {}).get("until") if prev else None
    return dt.datetime.fromisoformat(until) if until else None


def check_loop(
    db: Database,
    settings: Settings,
    loop: LoopConfig,
    *,
    now: dt.datetime | None = None,
    last_cycle_at: dt.datetime | None = None,
) -> Decision:
    """What the loop would do now, with every reason."""
    now = now or utcnow()
    t = loop.triggers
    since = _since(db, loop)
    count, rewards, varied = _eligible(db, settings, loop, since, now)
    unit = UNIT[loop.algorithm]
    src = "/".join(loop.sources) + " " if loop.sources else ""
    what = f"{count}/{t.min_new_examples} new {src}{unit}" + (
        f" (scenario {loop.scenario})" if loop.scenario else ""
    )
    d = Decision(
        loop=loop.name, fire=False, ready=True, new_examples=count, since=since.isoformat() if since else None
    )

    d.checks.append(
        Check("new_examples", count > 0, what if count > 0 else f"no new {src}{unit} since the last cycle")
    )
    if t.min_holdout:
        held = _holdout_count(db, settings, loop)
        d.checks.append(Check("holdout", held >= t.min_holdout, f"{held}/{t.min_holdout} held-out examples"))
    if loop.algorithm in ("dpo", "grpo"):
        k = (
            loop.dataset.get("min_group_size")
            or t.min_group_size
            or (settings.datasets.grpo_min_group_size if loop.algorithm == "grpo" else 2)
        )
        d.checks.append(
            Check(
                "groups",
                count > 0,
                f"{count} {'pairs from groups' if loop.algorithm == 'dpo' else 'groups'} "
                f"with at least {k} members",
            )
        )
    if loop.algorithm == "grpo":
        d.checks.append(
            Check(
                "reward_variance",
                varied > 0,
                f"{varied}/{count} groups have rewards that differ (GRPO learns nothing from equal ones)",
            )
        )
    elif loop.algorithm == "sft" and len(rewards) >= 2:
        var = statistics.pvariance(rewards)
        # Only meaningful when the selection ranks by reward; teacher traces may all be unscored.
        if loop.dataset.get("top_fraction") is not None:
            d.checks.append(Check("reward_variance", var > 0, f"reward variance {var:.4f}"))
    free_mb = shutil.disk_usage(_existing(Path(settings.data_dir))).free // (1 << 20)
    d.checks.append(
        Check(
            "disk",
            free_mb >= t.min_free_disk_mb,
            f"{free_mb} MiB free in the data dir (floor {t.min_free_disk_mb})",
        )
    )
    base = base_model_of(settings, loop)
    try:
        from learnloop.models import resolve_base_model

        resolve_base_model(base)
        d.checks.append(Check("base_model", True, f"base model {base} present"))
    except LearnloopError as exc:
        d.checks.append(Check("base_model", False, str(exc)))
    failures, failed_at = failed_cycles(db, loop.name)
    if failures:
        # A cycle that failed on the same data (a guardrail, a bad config) would fail again at once:
        # wait as a retried job would, longer after each failure in a row, and say until when.
        wait = min(settings.daemon.retry_backoff * 2 ** (failures - 1), settings.daemon.retry_backoff_max)
        until = failed_at + dt.timedelta(seconds=wait)
        d.checks.append(
            Check(
                "after_failure",
                now >= until,
                f"{failures} cycle(s) failed in a row; the next may start at {until:%H:%M:%S} UTC"
                if now < until
                else f"{failures} cycle(s) failed in a row; backoff of {wait:.0f} s over",
            )
        )
    d.ready = all(c.ok for c in d.checks if c.name != "new_examples") and count > 0

    if count >= t.min_new_examples:
        d.triggers.append(f"threshold: {count} >= {t.min_new_examples} new {unit}")
    if (
        count > 0
        and t.max_interval
        and (last_cycle_at is None or (now - last_cycle_at).total_seconds() >= t.max_interval)
    ):
        ago = (
            "never trained"
            if last_cycle_at is None
            else f"last cycle {(now - last_cycle_at).total_seconds() / 3600:.1f} h ago"
        )
        d.triggers.append(f"max_interval: {ago} (max {t.max_interval / 3600:.1f} h)")
    if count > 0 and t.daily_at:
        hh, mm = map(int, t.daily_at.split(":"))
        slot = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        if now >= slot and (last_cycle_at is None or last_cycle_at < slot):
            d.triggers.append(f"daily at {t.daily_at} UTC")
    if count > 0 and t.reward_drop:
        drop = reward_drop(db, settings, loop, now)
        if drop:
            d.triggers.append(drop)
    d.fire = d.ready and bool(d.triggers)
    return d


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def reward_drop(db: Database, settings: Settings, loop: LoopConfig, now: dt.datetime) -> str | None:
    """The reason when the served version's recent mean reward fell below its evaluated
    level by the margin."""
    from learnloop.scoring.combine import combined_rewards

    t = loop.triggers
    with db.read_session() as s:
        alias = s.get(Alias, loop.alias)
        if alias is None or alias.version_id is None:
            return None
        vid = alias.version_id
        ev = s.scalars(
            select(Evaluation).where(Evaluation.candidate_id == vid).order_by(Evaluation.id.desc()).limit(1)
        ).first()
        level = _reward_of(ev.metrics if ev else {})
        if level is None:
            return None
        ids = list(
            s.scalars(
                select(Trajectory.id).where(
                    Trajectory.source == Source.served,
                    Trajectory.model_version == vid,
                    Trajectory.created_at >= now - dt.timedelta(hours=t.reward_window_hours),
                )
            )
        )
        rewards = list(combined_rewards(s, ids, settings.scoring).values())
    if len(rewards) < t.reward_min_samples:
        return None
    mean = sum(rewards) / len(rewards)
    if level - mean >= (t.reward_drop or 0):
        return (
            f"reward drop: served {vid} averages {mean:.3f} over {len(rewards)} trajectories "
            f"({t.reward_window_hours:g} h), evaluated at {level:.3f} (margin {t.reward_drop})"
        )
    return None


def _reward_of(metrics: dict[str, Any]) -> float | None:
    """The evaluated mean reward of the candidate (the evaluation stage's ``overall.reward_candidate``)."""
    overall = metrics.get("overall")
    if isinstance(overall, dict) and isinstance(overall.get("reward_candidate"), (int, float)):
        return float(overall["reward_candidate"])
    for key in ("reward", "reward_mean", "mean_reward", "candidate_reward"):
        v = metrics.get(key)
        if isinstance(v, dict):
            v = v.get("mean", v.get("candidate"))
        if isinstance(v, (int, float)):
            return float(v)
    return None


# -- loop rows ---------------------------------------------------------------------------------


def ensure_row(db: Database, name: str) -> None:
    with db.session() as s:
        if s.get(LoopState, name) is None:
            s.add(LoopState(name=name, state="idle", locked={}, readiness={}, last_outcome={}))
    # A concurrent daemon inserting the same name raises Conflict; callers catch and move on.


def due(db: Database, settings: Settings, now: dt.datetime | None = None) -> list[LoopConfig]:
    now = now or utcnow()
    out = []
    with db.read_session() as s:
        rows = {r.name: r for r in s.scalars(select(LoopState))}
    for loop in settings.loops:
        row = rows.get(loop.name)
        if loop.enabled and (row is None or row.next_check_at is None or row.next_check_at <= now):
            out.append(loop)
    return out


def next_due_in(db: Database, settings: Settings, now: dt.datetime | None = None) -> float | None:
    now = now or utcnow()
    with db.read_session() as s:
        times = [r.next_check_at for r in s.scalars(select(LoopState)) if r.next_check_at is not None]
    names = {lp.name for lp in settings.loops if lp.enabled}
    if not names:
        return None
    if not times:
        return 0.0
    return max(0.0, min((t - now).total_seconds() for t in times))


def check_and_submit(
    db: Database,
    settings: Settings,
    loop: LoopConfig,
    *,
    manual: bool = False,
    actor: str | None = None,
    now: dt.datetime | None = None,
) -> tuple[Decision | None, queue.JobInfo | None]:
    """Check one loop and queue its next cycle when it fires (or when ``manual``); records the decision."""
    now = now or utcnow()
    try:
        ensure_row(db, loop.name)
    except Conflict:
        pass
    check_lock(db, settings, loop)
    with db.read_session() as s:
        row = s.get(LoopState, loop.name)
        last_at = row.last_cycle_at if row else None
        was_busy = (row.readiness or {}).get("busy_job") if row else None
    busy = active_job(db, loop.name)
    if busy is not None:
        if manual:
            raise Conflict(
                f"Loop {loop.name!r} already has job {busy.id} ({busy.state.value}); "
                f"`learnloop jobs show {busy.id}` follows it."
            )
        # One cycle at a time: the next one counts from where this one ends, so there is nothing to check yet.
        if was_busy != busy.id:
            emit(
                db,
                "trigger.skipped",
                f"loop {loop.name}: not checked while job {busy.id} is {busy.state.value}",
                loop=loop.name,
                job_id=busy.id,
            )
        with db.session() as s:
            row = s.get(LoopState, loop.name)
            row.last_check_at, row.updated_at = now, now
            row.next_check_at = now + dt.timedelta(seconds=loop.triggers.check_interval)
            row.readiness = {
                **(row.readiness or {}),
                "busy_job": busy.id,
                "reasons": [f"cycle job {busy.id} is {busy.state.value}"],
                "checked_at": now.isoformat(),
            }
        return None, None
    decision = None if manual else check_loop(db, settings, loop, now=now, last_cycle_at=last_at)
    job = None
    if manual or (decision and decision.fire):
        job = submit_cycle(
            db,
            settings,
            loop,
            now=now,
            reason=f"manual ({actor})" if manual else "; ".join(decision.triggers),
        )
    elif decision is not None:
        emit(
            db,
            "trigger.skipped",
            f"loop {loop.name}: "
            + "; ".join(c.reason for c in decision.checks if not c.ok or c.name == "new_examples"),
            loop=loop.name,
            data={"reasons": decision.reasons, "new_examples": decision.new_examples},
        )
    with db.session() as s:
        row = s.get(LoopState, loop.name)
        row.last_check_at = now
        row.next_check_at = now + dt.timedelta(seconds=loop.triggers.check_interval)
        if decision is not None:
            row.readiness = {
                "ready": decision.ready,
                "fire": decision.fire,
                "new_examples": decision.new_examples,
                "reasons": decision.reasons,
                "checks": [asdict(c) for c in decision.checks],
                "triggers": decision.triggers,
                "checked_at": now.isoformat(),
            }
        if job is not None:
            row.state = "queued"
        row.updated_at = now
    return decision, job


def submit_cycle(
    db: Database, settings: Settings, loop: LoopConfig, *, now: dt.datetime, reason: str
) -> queue.JobInfo:
    since = _since(db, loop)
    with db.read_session() as s:
        n = 1 + (
            s.scalar(
                select(func.count()).select_from(Job).where(Job.loop == loop.name, Job.kind == JobKind.train)
            )
            or 0
        )
    payload = {
        "loop": loop.name,
        "cycle": n,
        "since": since.isoformat() if since else None,
        "until": now.isoformat(),
        "reason": reason,
    }
    job, created = queue.submit(
        db,
        "train",
        payload,
        priority=loop.priority,
        loop=loop.name,
        idempotency_key=f"loop:{loop.name}:cycle:{n}",
        max_attempts=loop.max_attempts,
    )
    if created:
        emit(
            db,
            "trigger.fired",
            f"loop {loop.name}: cycle {n} queued as job {job.id} ({reason})",
            loop=loop.name,
            job_id=job.id,
            data={"reason": reason, "cycle": n},
        )
    return job


# -- config locks ------------------------------------------------------------------------------


def lock_values(settings: Settings, loop: LoopConfig) -> dict[str, Any]:
    """The settings an adapter cannot survive, as this config has them."""
    from learnloop.training.config import LoraConfig

    lora = LoraConfig.model_validate(loop.train.get("lora", {}))
    return {
        "base_model": base_model_of(settings, loop),
        "max_length": loop.max_length,
        "lora.r": lora.r,
        "lora.alpha": lora.alpha,
        "lora.target_modules": lora.target_modules,
        "chat_template": chat_template_hash(base_model_of(settings, loop)),
    }


def chat_template_hash(base_model: str) -> str | None:
    """sha256 of the base model's chat template (None when the model is not on disk yet)."""
    try:
        from learnloop.models import resolve_base_model

        folder = resolve_base_model(base_model)
    except LearnloopError:
        return None
    template = None
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text()
    else:
        try:
            template = json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
        except (OSError, json.JSONDecodeError):
            template = None
    if template is None:
        return None
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def check_lock(db: Database, settings: Settings, loop: LoopConfig) -> None:
    """Refuse a changed locked setting, naming the key, the locked value and what to do instead."""
    with db.read_session() as s:
        row = s.get(LoopState, loop.name)
        locked = dict(row.locked or {}) if row else {}
    if not locked:
        return
    now = lock_values(settings, loop)
    for key, value in locked.items():
        if key == "chat_template" and (value is None or now.get(key) is None):
            continue
        if key in now and now[key] != value:
            raise ConfigError(
                f"Loop {loop.name!r}: {key} is locked to {value!r} because the loop has trained versions on "
                f"it (configured now: {now[key]!r}); its adapters cannot carry over. "
                f"Put {key} back to {value!r}, or add a new [[loops]] entry with another name for the new "
                "setting (it starts from the base model)."
            )


def check_locks(db: Database, settings: Settings) -> None:
    for loop in settings.loops:
        check_lock(db, settings, loop)


def record_cycle(
    db: Database,
    settings: Settings,
    loop: LoopConfig,
    job_id: int,
    outcome: dict[str, Any],
    *,
    head_version: str | None,
    advanced: bool,
) -> None:
    """After a cycle: the outcome, the time, the head (when it advanced) and the locks
    (from the first version)."""
    now = utcnow()
    with db.session() as s:
        row = s.get(LoopState, loop.name)
        if row is None:
            row = LoopState(name=loop.name, locked={}, readiness={}, last_outcome={})
            s.add(row)
        row.last_outcome = {**outcome, "job_id": job_id, "at": now.isoformat()}
        row.last_cycle_at = now
        row.state = "idle"
        if advanced:
            if head_version:
                row.head_version_id = head_version
            if not row.locked:
                row.locked = lock_values(settings, loop)
        row.updated_at = now


def set_state(db: Database, name: str, state: str, outcome: dict[str, Any] | None = None) -> None:
    with db.session() as s:
        row = s.get(LoopState, name)
        if row is None:
            return
        row.state = state
        if outcome is not None:
            row.last_outcome = {**outcome, "at": utcnow().isoformat()}
        row.updated_at = utcnow()


# -- status ------------------------------------------------------------------------------------


def status(db: Database, settings: Settings, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Per configured loop: state, last check, next check in s, readiness reasons,
    running job, last outcome."""
    now = now or utcnow()
    with db.read_session() as s:
        rows = {r.name: r for r in s.scalars(select(LoopState))}
        jobs = {
            j.loop: j
            for j in s.scalars(
                select(Job).where(Job.state.in_(queue.ACTIVE), Job.loop.is_not(None)).order_by(Job.id.desc())
            )
        }
        out = []
        for loop in settings.loops:
            row = rows.get(loop.name)
            job = jobs.get(loop.name)
            state = (
                "disabled"
                if not loop.enabled
                else (job.state.value if job is not None else (row.state if row else "new"))
            )
            if state == "queued" and job is None:
                state = "idle"
            lock_error = None
            try:
                check_lock(db, settings, loop)
            except ConfigError as exc:
                lock_error, state = str(exc), "refused"
            out.append(
                {
                    "name": loop.name,
                    "algorithm": loop.algorithm,
                    "state": state,
                    "last_check_at": row.last_check_at.isoformat() if row and row.last_check_at else None,
                    "next_check_in_s": max(0, round((row.next_check_at - now).total_seconds()))
                    if row and row.next_check_at
                    else 0,
                    "ready": (row.readiness or {}).get("ready") if row else None,
                    "reasons": (row.readiness or {}).get("reasons", []) if row else [],
                    "head_version": row.head_version_id if row else None,
                    "job": None
                    if job is None
                    else {"id": job.id, "state": job.state.value, "progress": job.progress or {}},
                    "last_outcome": (row.last_outcome or None) if row else None,
                    "last_cycle_at": row.last_cycle_at.isoformat() if row and row.last_cycle_at else None,
                    "locked": (row.locked or {}) if row else {},
                    "lock_error": lock_error,
                }
            )
    return out


def head_adapter(db: Database, settings: Settings, loop: LoopConfig) -> tuple[Path | None, str | None]:
    """(adapter folder the next cycle continues, its version id): the loop's head, or None for the base."""
    with db.read_session() as s:
        row = s.get(LoopState, loop.name)
        head = row.head_version_id if row else None
        if head:
            from learnloop.store.models import ModelVersion

            mv = s.get(ModelVersion, head)
            job = s.get(Job, mv.job_id) if mv and mv.job_id else None
            # Prefer the training run's own adapter folder: it keeps the optimizer state beside the weights.
            own = (job.result or {}).get("adapter_dir") if job else None
            if own and Path(own).is_dir():
                return Path(own), head
            if mv and mv.artifact_path and Path(mv.artifact_path).is_dir():
                return Path(mv.artifact_path), head
            if Path(data_dir(settings.data_dir).adapter(head)).is_dir():
                return data_dir(settings.data_dir).adapter(head), head
    prev = last_cycle(db, loop.name)
    if prev is not None and not head:
        own = (prev.result or {}).get("adapter_dir")
        if own and Path(own).is_dir() and (prev.result or {}).get("head", True):
            return Path(own), None
    return None, head
