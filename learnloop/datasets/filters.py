"""Which trajectories a dataset is built from, and streaming them out of the database in chunks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import Select, String, and_, cast, distinct, func, select
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session
from sqlalchemy.sql.util import ClauseAdapter

from learnloop.config import DatasetSettings
from learnloop.errors import ValidationFailed, invalid, problems_text
from learnloop.store.models import Feedback, Source, Split, Trajectory, utcnow

Kind = Literal["sft", "dpo", "grpo", "kto", "prompts", "holdout"]
KINDS: tuple[str, ...] = ("sft", "dpo", "grpo", "kto", "prompts", "holdout")
GroupBy = Literal["prompt", "group", "scenario"]

# Columns the builders read; the ORM entity is not loaded (rows are plain tuples, cheaper to stream).
ROW_COLUMNS = (
    Trajectory.id,
    Trajectory.messages,
    Trajectory.source,
    Trajectory.scenario,
    Trajectory.group_id,
    Trajectory.prompt_hash,
    Trajectory.tags,
    Trajectory.created_at,
)


class DatasetFilters(BaseModel):
    """What goes into a dataset. Unset fields take their defaults from ``[datasets]`` in the config.

    The resolved filters (defaults filled in, ``lookback_hours`` turned into ``since``) are
    recorded with the dataset, so the same selection can be rebuilt later.
    """

    model_config = ConfigDict(extra="forbid")

    lookback_hours: float | None = Field(
        None, gt=0, description="Only trajectories created in the last N hours."
    )
    since: dt.datetime | None = Field(
        None, description="Only trajectories created at or after this time (UTC)."
    )
    until: dt.datetime | None = Field(None, description="Only trajectories created before this time (UTC).")
    window_id: str | None = Field(None, description="Only trajectories of this capture time window.")
    scenario: str | None = Field(None, description="Only trajectories of this scenario.")
    agents: list[str] = Field(
        default_factory=list, description="Only trajectories recorded by these agents (empty: all)."
    )
    min_agents: int | None = Field(
        None,
        ge=1,
        description="Only windows (or groups, see agents_per) in which at least N distinct agents acted.",
    )
    agents_per: Literal["window", "group"] = Field("window", description="What min_agents counts agents in.")
    sources: list[Source] = Field(default_factory=list, description="Only these sources (empty: all).")
    tags: list[str] = Field(
        default_factory=list, description="Only trajectories carrying every one of these tags."
    )
    min_reward: float | None = Field(
        None,
        description="SFT/holdout: least combined reward. "
        "KTO: least reward of a desirable answer (default 0.5).",
    )
    max_undesirable_reward: float | None = Field(
        None,
        description="KTO: most reward of an undesirable answer "
        "(unset: every scored answer below min_reward).",
    )
    top_fraction: float | None = Field(
        None, gt=0, le=1, description="SFT: keep this share of the best-rewarded."
    )
    teacher_bypass_reward: bool = Field(
        True, description="SFT: teacher traces are distillation data and skip the reward bar."
    )
    min_group_size: int | None = Field(
        None, ge=2, description="DPO/GRPO: least scored members a group needs."
    )
    min_margin: float | None = Field(None, ge=0, description="DPO: least reward gap chosen - rejected.")
    max_pairs_per_group: int | None = Field(None, ge=1, description="DPO: most pairs from one group.")
    group_by: GroupBy | None = Field(
        None, description="DPO/GRPO: group by prompt (same prompt hash), group (group id) or scenario."
    )
    include_corrections: bool = Field(
        True, description="DPO/SFT/KTO: use feedback corrections as chosen (desirable) answers."
    )
    dedup: bool | None = Field(None, description="Drop exact and near-duplicate examples.")
    replay_fraction: float | None = Field(
        None, ge=0, lt=1, description="Share mixed in from earlier datasets."
    )

    @model_validator(mode="after")
    def _consistent(self) -> DatasetFilters:
        if self.since and self.until and self.since >= self.until:
            raise ValueError("'since' must be before 'until'")
        bar = self.min_reward
        if self.max_undesirable_reward is not None and bar is not None and self.max_undesirable_reward >= bar:
            raise ValueError("'max_undesirable_reward' must be below 'min_reward' (the desirable bar)")
        return self

    def check_kind(self, kind: str) -> None:
        """Refuse filters that mean nothing for ``kind``: silently ignoring one
        would build the wrong dataset."""
        problems = [
            (f"filters.{name}", f"does not apply to {kind} datasets (only to {', '.join(kinds)})")
            for name, kinds in _ONLY_FOR.items()
            if kind not in kinds and getattr(self, name) is not None
        ]
        if problems:
            raise ValidationFailed(
                f"Invalid dataset filters — {problems_text(problems)}. Leave them out.", problems
            )

    def resolved(self, kind: str, config: DatasetSettings, now: dt.datetime | None = None) -> DatasetFilters:
        """A copy with every default filled in for ``kind`` and the lookback fixed to a start time."""
        self.check_kind(kind)
        now = now or utcnow()
        update: dict[str, Any] = {}
        if self.lookback_hours is not None:
            start = now - dt.timedelta(hours=self.lookback_hours)
            update["since"] = max(start, self.since) if self.since else start
            update["lookback_hours"] = None
        if self.dedup is None:
            update["dedup"] = config.dedup
        if kind == "sft" and self.min_reward is None and self.top_fraction is None:
            update["min_reward"] = config.sft_min_reward
            update["top_fraction"] = config.sft_top_fraction
        if kind == "dpo":
            update["min_margin"] = config.dpo_min_margin if self.min_margin is None else self.min_margin
            update["max_pairs_per_group"] = self.max_pairs_per_group or config.dpo_max_pairs_per_group
            update["group_by"] = self.group_by or "prompt"
            update["min_group_size"] = self.min_group_size or 2
        if kind == "grpo":
            update["group_by"] = self.group_by or "group"
            update["min_group_size"] = self.min_group_size or config.grpo_min_group_size
        if kind in ("sft", "dpo", "grpo", "kto"):
            update["replay_fraction"] = (
                config.replay_fraction if self.replay_fraction is None else self.replay_fraction
            )
        return self.model_copy(update=update)

    def recorded(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=False)


_ONLY_FOR: dict[str, tuple[str, ...]] = {
    "min_reward": ("sft", "kto", "holdout"),
    "max_undesirable_reward": ("kto",),
    "top_fraction": ("sft",),
    "min_margin": ("dpo",),
    "max_pairs_per_group": ("dpo",),
    "min_group_size": ("dpo", "grpo"),
    "group_by": ("dpo", "grpo"),
    "replay_fraction": ("sft", "dpo", "grpo", "kto"),
}


def parse_filters(data: dict[str, Any] | None) -> DatasetFilters:
    """Validate filters from the CLI, the API or a recorded dataset; every problem is named."""
    try:
        return DatasetFilters.model_validate(data or {})
    except ValidationError as exc:
        raise invalid(exc, "dataset filters", "filters") from None


def where_clauses(f: DatasetFilters, split: Split) -> list[Any]:
    clauses: list[Any] = [Trajectory.split == split]
    if f.since is not None:
        clauses.append(Trajectory.created_at >= f.since)
    if f.until is not None:
        clauses.append(Trajectory.created_at < f.until)
    if f.window_id is not None:
        clauses.append(Trajectory.window_id == f.window_id)
    if f.scenario is not None:
        clauses.append(Trajectory.scenario == f.scenario)
    if f.sources:
        clauses.append(Trajectory.source.in_(list(f.sources)))
    if f.agents:
        clauses.append(Trajectory.agent.in_(list(f.agents)))
    if f.min_agents is not None:
        # Windows (or groups) where enough distinct agents acted,
        # counted among the rows the other filters keep.
        col = Trajectory.window_id if f.agents_per == "window" else Trajectory.group_id
        busy = (
            select(col)
            .where(*clauses, col.is_not(None), Trajectory.agent.is_not(None))
            .group_by(col)
            .having(func.count(distinct(Trajectory.agent)) >= f.min_agents)
            .correlate(None)  # its own scan of the table, not a correlated reference to the outer row
        )
        clauses.append(col.in_(busy))
    return clauses


def has_tags(row_tags: Sequence[Any] | None, wanted: Sequence[str]) -> bool:
    # Tags are a JSON list; matching in Python keeps one code path for SQLite and PostgreSQL.
    return not wanted or set(wanted) <= set(row_tags or ())


def group_columns(group_by: GroupBy) -> list[Any]:
    """Columns whose equal values make a group; the prompt hash is always last,
    so one group shares one prompt."""
    if group_by == "group":
        return [Trajectory.group_id, Trajectory.prompt_hash]
    if group_by == "scenario":
        return [Trajectory.scenario, Trajectory.prompt_hash]
    return [Trajectory.prompt_hash]


def stream_rows(
    session: Session,
    f: DatasetFilters,
    split: Split,
    *,
    chunk_size: int,
    order_by: Sequence[Any] = (),
    extra_where: Sequence[Any] = (),
    columns: Sequence[Any] = ROW_COLUMNS,
    prompts: Sequence[str] | None = None,
) -> Iterator[list[Row[Any]]]:
    """Matching rows in chunks of ``chunk_size`` (a server-side cursor on PostgreSQL), tags applied;
    with ``prompts``, only the rows with those prompt hashes."""
    stmt: Select[Any] = (
        select(*columns)
        .where(*where_clauses(f, split), *extra_where)
        .order_by(*order_by, Trajectory.created_at, Trajectory.id)
        .execution_options(yield_per=chunk_size)
    )
    if prompts is not None:
        stmt = only_prompts(stmt, prompts)
    result = session.execute(stmt)
    try:
        for part in result.partitions():
            rows = [r for r in part if has_tags(r.tags, f.tags)] if f.tags else list(part)
            if rows:
                yield rows
    finally:
        result.close()


def only_prompts(stmt: Select[Any], prompts: Sequence[str]) -> Select[Any]:
    """``stmt`` over only the trajectories with these prompt hashes. It finds them through the
    prompt-hash index first (a CTE both databases materialise), then applies its own conditions:
    left to choose, SQLite's planner (it keeps no statistics here) scans a whole source or scenario."""
    of_prompts = (
        select(Trajectory)
        .where(Trajectory.prompt_hash.in_(list(prompts)))
        .cte("of_prompts")
        .prefix_with("MATERIALIZED")
    )
    return ClauseAdapter(of_prompts).traverse(stmt)


def latest_corrections(
    session: Session, f: DatasetFilters, split: Split, prompts: Sequence[str] | None = None
) -> dict[str, tuple[int, Any]]:
    """For each matching trajectory with a correction in its feedback: (feedback id, newest correction).

    ``prompts``: only trajectories with these prompt hashes (see ``only_prompts``)."""
    # JSON null and SQL NULL both mean "no correction"; the cast compares the same way on both databases.
    has_correction = and_(Feedback.correction.is_not(None), cast(Feedback.correction, String) != "null")
    stmt = (
        select(Feedback.trajectory_id, Feedback.id, Feedback.correction, Trajectory.tags)
        .join(Trajectory, Trajectory.id == Feedback.trajectory_id)
        .where(*where_clauses(f, split), has_correction)
        .order_by(Feedback.trajectory_id, Feedback.created_at, Feedback.id)
    )
    if prompts is not None:
        stmt = only_prompts(stmt, prompts)
    out: dict[str, tuple[int, Any]] = {}
    for tid, fid, correction, tags in session.execute(stmt):
        if has_tags(tags, f.tags):
            out[tid] = (fid, correction)  # later rows overwrite earlier ones: newest wins
    return out
