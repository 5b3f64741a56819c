"""The SQL schema (SQLAlchemy 2). Every change to it is an Alembic migration in ``migrations/versions``."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite drops tzinfo on its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        # SQLite compares datetimes as text: store them naive so every row has one format.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Source(str, enum.Enum):
    production = "production"
    teacher = "teacher"
    synthetic = "synthetic"
    served = "served"


class Split(str, enum.Enum):
    train = "train"
    holdout = "holdout"


class ScoreSource(str, enum.Enum):
    heuristic = "heuristic"
    human = "human"
    judge = "judge"
    env = "env"


class JobKind(str, enum.Enum):
    train = "train"
    evaluate = "evaluate"
    export = "export"
    score = "score"


class JobState(str, enum.Enum):
    queued = "queued"
    running = "running"
    paused = "paused"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class DesiredState(str, enum.Enum):
    run = "run"
    pause = "pause"
    stop = "stop"
    # Stop variants the daemon tells apart when the run has checkpointed: move on to the next job
    # (this one requeued behind the others), or end it for good. A VARCHAR column: no migration.
    skip = "skip"
    cancel = "cancel"


class VersionState(str, enum.Enum):
    candidate = "candidate"
    serving = "serving"
    archived = "archived"
    rejected = "rejected"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # native_enum=False: a VARCHAR on both databases, so adding a value needs no ALTER TYPE.
    return Enum(cls, name=name, native_enum=False, length=32, validate_strings=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONType, list[Any]: JSONType, dt.datetime: UTCDateTime()}


class Trajectory(Base):
    __tablename__ = "trajectories"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    project: Mapped[str] = mapped_column(String(128), default="default")
    scenario: Mapped[str | None] = mapped_column(String(256), index=True)
    group_id: Mapped[str | None] = mapped_column(String(256), index=True)
    window_id: Mapped[str | None] = mapped_column(String(128))
    agent: Mapped[str | None] = mapped_column(String(128))
    source: Mapped[Source] = mapped_column(_enum(Source, "source"), default=Source.production, index=True)
    model: Mapped[str | None] = mapped_column(String(256))
    model_version: Mapped[str | None] = mapped_column(String(64))
    messages: Mapped[list[Any]] = mapped_column(JSONType)
    tools: Mapped[list[Any] | None] = mapped_column(JSONType)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    tags: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    # Hash of the prompt (messages before the first assistant turn): groups DPO pairs and fixes the split.
    prompt_hash: Mapped[str] = mapped_column(String(64), index=True)
    split: Mapped[Split] = mapped_column(_enum(Split, "split"), default=Split.train)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ingested_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        Index("ix_trajectories_created_at", "created_at"),
        # The daemon's loop checks look up what arrived since their last look.
        Index("ix_trajectories_ingested_at", "ingested_at"),
    )


class Score(Base):
    __tablename__ = "scores"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trajectory_id: Mapped[str] = mapped_column(ForeignKey("trajectories.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)
    source: Mapped[ScoreSource] = mapped_column(_enum(ScoreSource, "score_source"))
    version: Mapped[str | None] = mapped_column(
        String(64), doc="Version of the reward function or judge prompt."
    )
    author: Mapped[str | None] = mapped_column(String(128))
    judge_model: Mapped[str | None] = mapped_column(String(256))
    rationale: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(256), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_scores_name_source", "name", "source"),)


class Feedback(Base):
    """Raw feedback as the application sent it; the scoring stage turns it into `human` scores."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trajectory_id: Mapped[str] = mapped_column(ForeignKey("trajectories.id", ondelete="CASCADE"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    rating: Mapped[float | None] = mapped_column(Float)
    thumbs: Mapped[int | None] = mapped_column(Integer, doc="+1 up, -1 down.")
    success: Mapped[bool | None] = mapped_column(Boolean)
    correction: Mapped[Any | None] = mapped_column(
        JSONType, doc="Corrected answer: text or an assistant message."
    )
    comment: Mapped[str | None] = mapped_column(Text)
    author: Mapped[str | None] = mapped_column(String(128))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Judgment(Base):
    """Cache of LLM-judge calls, keyed by a hash of (judge model, prompt version, group contents)."""

    __tablename__ = "judgments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cache_key: Mapped[str] = mapped_column(String(64), unique=True)
    judge_model: Mapped[str] = mapped_column(String(256))
    scenario: Mapped[str | None] = mapped_column(String(256))
    trajectory_ids: Mapped[list[Any]] = mapped_column(JSONType)
    result: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str | None] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(32), doc="sft, dpo or grpo.")
    split: Mapped[Split] = mapped_column(_enum(Split, "split"), default=Split.train)
    filters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    stats: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    item_ids: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    path: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind, "job_kind"))
    priority: Mapped[int] = mapped_column(Integer, default=100, doc="Lower runs first.")
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"), default=JobState.queued)
    desired_state: Mapped[DesiredState] = mapped_column(
        _enum(DesiredState, "desired_state"), default=DesiredState.run
    )
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    error: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    checkpoint_path: Mapped[str | None] = mapped_column(String(1024))
    loop: Mapped[str | None] = mapped_column(
        String(128), index=True, doc="The [[loops]] entry that queued it."
    )
    result: Mapped[dict[str, Any]] = mapped_column(
        JSONType, default=dict, doc="What a finished job produced."
    )
    output_tail: Mapped[str | None] = mapped_column(Text, doc="Last lines of a failed job's output.")
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    run_after: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_jobs_claim", "state", "priority", "id"),)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(256))
    base_model: Mapped[str] = mapped_column(String(512))
    base_model_hash: Mapped[str | None] = mapped_column(String(64))
    loop: Mapped[str | None] = mapped_column(String(128), index=True)
    algorithm: Mapped[str | None] = mapped_column(String(32))
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, doc="The full training config.")
    files: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, doc="Adapter file name -> sha256.")
    adapter_sha256: Mapped[str | None] = mapped_column(String(64), doc="Hash over the adapter's files.")
    dataset_hash: Mapped[str | None] = mapped_column(String(64))
    gate: Mapped[dict[str, Any]] = mapped_column(
        JSONType, default=dict, doc="The gate's verdict and reasons."
    )
    ever_served: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str | None] = mapped_column(Text)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    artifact_path: Mapped[str | None] = mapped_column(String(1024))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    state: Mapped[VersionState] = mapped_column(
        _enum(VersionState, "version_state"), default=VersionState.candidate
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    promoted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class Evaluation(Base):
    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    candidate_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    baseline_id: Mapped[str | None] = mapped_column(String(64), doc="A version id, or 'base'.")
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    scenario: Mapped[str | None] = mapped_column(String(256))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    report: Mapped[dict[str, Any]] = mapped_column(
        JSONType, default=dict, doc="Per-example answers and scores."
    )
    gate: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, doc="Policy, verdict and reasons.")
    verdict: Mapped[str] = mapped_column(String(32), doc="promote, reject or inconclusive.")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TrainingMetric(Base):
    __tablename__ = "training_metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    learning_rate: Mapped[float | None] = mapped_column(Float)
    grad_norm: Mapped[float | None] = mapped_column(Float)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    extra: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_training_metrics_job_step"),)


class ScoreRun(Base):
    """One application of a versioned scorer (heuristic) to a trajectory, whatever it gave.

    A reward function may answer "not applicable" (None), which stores no score; this row
    records that it ran, so `rewards apply` does not reload and re-run it on every pass.
    A function that raised leaves no row, so it is retried (and reported) next time.
    """

    __tablename__ = "score_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trajectory_id: Mapped[str] = mapped_column(ForeignKey("trajectories.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16), doc="'scored' or 'not_applicable'.")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("trajectory_id", "name", "version", name="uq_score_runs_trajectory_name_version"),
        Index("ix_score_runs_name_version", "name", "version"),
    )


class Alias(Base):
    """A served name (``learnloop``, one per loop) pointing at an immutable version; NULL means the base."""

    __tablename__ = "aliases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version_id: Mapped[str | None] = mapped_column(String(64))
    candidate_id: Mapped[str | None] = mapped_column(
        String(64), doc="Gets `split` of traffic (A/B) or `shadow`."
    )
    split: Mapped[float] = mapped_column(Float, default=0.0)
    shadow: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AliasEvent(Base):
    """Append-only history of what each alias served: never updated or deleted."""

    __tablename__ = "alias_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alias: Mapped[str] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(32), doc="promote, rollback, force, restore, split.")
    from_version: Mapped[str | None] = mapped_column(String(64))
    to_version: Mapped[str | None] = mapped_column(String(64))
    actor: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    evaluation_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TrafficCount(Base):
    """Requests each target answered, per minute and alias: every answer counted, whether or not its
    trajectory was kept (an upstream's answers are sampled), for traffic shares and costs."""

    __tablename__ = "traffic_counts"

    minute: Mapped[dt.datetime] = mapped_column(UTCDateTime(), primary_key=True)
    alias: Mapped[str] = mapped_column(
        String(128), primary_key=True, doc="The alias the request named ('' for a target named directly)."
    )
    target: Mapped[str] = mapped_column(
        String(64), primary_key=True, doc="base, a version id or upstream:<name>."
    )
    requests: Mapped[int] = mapped_column(Integer, default=0)
    cut: Mapped[int] = mapped_column(Integer, default=0, doc="Answers cut short (client gone, failure).")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost: Mapped[float] = mapped_column(
        Float, default=0.0, doc="Priced when counted (upstream or own price)."
    )


class Event(Base):
    """What happened, for people and alerts: job transitions, trigger decisions, failures, promotions."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(
        String(64), index=True, doc="e.g. job.failed, trigger.fired, version.promoted."
    )
    level: Mapped[str] = mapped_column(String(16), default="info", doc="info, warning or error.")
    loop: Mapped[str | None] = mapped_column(String(128))
    job_id: Mapped[int | None] = mapped_column(Integer, index=True)
    version_id: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class LoopState(Base):
    """The daemon's memory of one [[loops]] entry: its head version, its checks, its locked settings."""

    __tablename__ = "loops"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(32), default="idle")
    head_version_id: Mapped[str | None] = mapped_column(String(64))
    locked: Mapped[dict[str, Any]] = mapped_column(
        JSONType, default=dict, doc="Settings an adapter cannot survive."
    )
    readiness: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    last_outcome: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    last_check_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    next_check_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_cycle_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    tally: Mapped[dict[str, Any] | None] = mapped_column(
        JSONType, doc="What the checks counted so far and when they last looked (daemon/tally.py)."
    )


class LoopTally(Base):
    """How many examples one prompt gives a loop's next cycle (or its held-out split), as last counted."""

    __tablename__ = "loop_tallies"

    # The prompt hash first: a check looks up a few hundred prompts of one loop at a time, and a
    # fresh table has no statistics that would steer PostgreSQL past a (loop, part) prefix scan.
    prompt_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    loop: Mapped[str] = mapped_column(String(128), primary_key=True)
    part: Mapped[str] = mapped_column(String(16), primary_key=True, doc="'train' or 'holdout'.")
    examples: Mapped[int] = mapped_column(Integer)
    varied: Mapped[int] = mapped_column(Integer, doc="GRPO groups among them whose rewards differ.")


class Control(Base):
    """Switches a person flips for every process at once (``daemon.paused``, ``daemon.frozen``)."""

    __tablename__ = "control"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AlertDelivery(Base):
    """One alert to one webhook: deduplicated by key, retried with backoff."""

    __tablename__ = "alert_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(String(128))
    dedup_key: Mapped[str] = mapped_column(String(256), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="pending", doc="pending, sent or failed.")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class OtlpCall(Base):
    """An LLM call span received over OTLP whose trace's root span has not arrived yet (``trajectory_id``
    null), or that is part of a trajectory already (kept a while so a resent export stores it once)."""

    __tablename__ = "otlp_calls"

    trace_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    span_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    call: Mapped[dict[str, Any]] = mapped_column(JSONType, doc="The mapped call and its span's attributes.")
    trajectory_id: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
