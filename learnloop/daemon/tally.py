"""How many examples a loop's next cycle would get, counted from what changed since the last check.

A cycle trains on what the dataset builder makes of the loop's selection (its scenario, sources,
tags and dataset options, over the rows since the last cycle), and a loop may ask for a number of
held-out examples first. Running the builder over all of that at every check made a check cost the
whole history. Instead the counts are kept per prompt, in ``loop_tallies``:

- a prompt's examples depend on that prompt's rows alone: an SFT example is one row, and every DPO
  pair and GRPO group lies within one prompt hash (the grouping keys all end with it);
- the first check of a selection runs the builder dry over all of it and stores the count of each
  prompt; the loop's row keeps the totals (``loops.tally``);
- each later check asks the database which prompts changed since it last looked (rows ingested,
  scores added, corrections given, rows whose ``created_at`` the window's moving end passed), runs
  the same builder over those prompts only, and replaces their counts and the totals.

The counts are therefore the builder's own: what a dry build of the whole selection gives (before
the build's duplicate removal, as before). A selection where one prompt's examples depend on other
prompts' rows is counted dry at every check instead: SFT ``top_fraction`` (a rank over all
rewards), ``min_agents`` (a count over windows or groups) and ``lookback_hours`` (its start moves
at every check). A new builder keeps this working as long as none of its examples spans two prompts.

Every look reaches ``LAG`` further back than the last one: a writer stamps its rows before it
commits them, so a check can miss rows a transaction still held open. A transaction open longer
than ``LAG`` could hide its rows from the counts until the selection changes (the next cycle).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.orm import Session

from learnloop.config import Settings
from learnloop.config.loops import LoopConfig
from learnloop.datasets.builders import BUILDERS, BuildReport, Item
from learnloop.datasets.filters import DatasetFilters, parse_filters
from learnloop.store.db import Database
from learnloop.store.models import Feedback, LoopState, LoopTally, Score, Trajectory, utcnow
from learnloop.store.trajectories import prompt_hash

LAG = dt.timedelta(minutes=2)
_CHUNK = 500  # prompts re-counted per query
_VERSION = 1  # bump when what a stored count means changes: every tally starts over
_NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)


@dataclass
class Counts:
    """What a check counted: examples the cycle would get, and what its readiness checks need."""

    examples: int
    varied: int = 0  # GRPO groups whose rewards differ
    rewards: list[float] | None = None  # SFT example rewards, only when counted dry


def dataset_filters(loop: LoopConfig, since: dt.datetime | None, until: dt.datetime | None) -> dict[str, Any]:
    """The dataset filters of the loop's next cycle: its selection between ``since`` and ``until``."""
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


def reward_rule(settings: Settings) -> Any:
    """How scores become the reward the builders rank and pair by: the cycle's build uses the same."""
    return settings.scoring


def count_examples(
    db: Database, settings: Settings, loop: LoopConfig, since: dt.datetime | None, until: dt.datetime
) -> Counts:
    """The examples (traces, pairs or groups) a cycle starting at ``until`` would train on."""
    kind = loop.dataset_kind  # rollout loops count prompts
    f = parse_filters(dataset_filters(loop, since, until)).resolved(kind, settings.datasets)
    if f.replay_fraction:
        f = f.model_copy(update={"replay_fraction": 0.0})
    if not _per_prompt(loop.dataset, f):
        return _dry(db, settings, kind, f)
    return _Tally(db, settings, loop.name, "train", kind, f).count()


def count_holdout(db: Database, settings: Settings, loop: LoopConfig) -> int:
    """The held-out examples of the loop's selection (what its evaluations run on)."""
    f = parse_filters({"scenario": loop.scenario, "sources": list(loop.sources), "tags": list(loop.tags)})
    f = f.resolved("holdout", settings.datasets)
    return _Tally(db, settings, loop.name, "holdout", "holdout", f).count().examples


def _per_prompt(options: dict[str, Any], f: DatasetFilters) -> bool:
    """Whether one prompt's examples depend on that prompt's rows alone (see the module docstring)."""
    return f.top_fraction is None and f.min_agents is None and options.get("lookback_hours") is None


def _dry(db: Database, settings: Settings, kind: str, f: DatasetFilters) -> Counts:
    counts = Counts(0, 0, [])
    with db.read_session() as s:
        for item in _build(s, settings, kind, f):
            _add(counts, kind, item)
    return counts


def _build(
    s: Session, settings: Settings, kind: str, f: DatasetFilters, prompts: list[str] | None = None
) -> Iterator[Item]:
    yield from BUILDERS[kind](
        s, f, reward_rule(settings), BuildReport(), settings.datasets.chunk_size, prompts
    )


def _add(counts: Counts, kind: str, item: Item) -> None:
    counts.examples += 1
    if kind == "grpo" and len(set(item.record["rewards"])) > 1:
        counts.varied += 1
    if counts.rewards is not None and item.reward is not None:
        counts.rewards.append(item.reward)


def _prompt_of(item: Item) -> str:
    """The prompt hash of an example, as the store computed it for the rows it came from."""
    record = item.record
    return prompt_hash(record["messages"] if "messages" in record else record["prompt"])


class _Tally:
    """One part ('train' or 'holdout') of one loop's stored counts, brought up to date."""

    def __init__(
        self, db: Database, settings: Settings, loop: str, part: str, kind: str, f: DatasetFilters
    ) -> None:
        self.db, self.settings, self.loop, self.part, self.kind, self.f = db, settings, loop, part, kind, f
        self.until = f.until
        # What makes a stored count stale besides new data: another selection or reward rule.
        rule = reward_rule(settings)
        self.fingerprint = hashlib.sha256(
            json.dumps(
                {
                    "version": _VERSION,
                    "kind": kind,
                    "filters": f.model_dump(mode="json", exclude={"until"}),
                    "rule": rule.model_dump(mode="json") if isinstance(rule, BaseModel) else dict(rule),
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()
        # Which later writes can change a count: rewards only matter with a reward bar or pairs and
        # groups; corrections only where the builder uses them.
        self.needs_scores = kind not in ("holdout", "prompts") and not (
            kind == "sft" and f.min_reward is None
        )
        self.needs_feedback = kind not in ("holdout", "grpo", "prompts") and f.include_corrections

    def count(self) -> Counts:
        now = utcnow()  # before the first read: everything committed before it is seen
        with _snapshot(self.db) as s:
            row = s.get(LoopState, self.loop)
            if row is None:  # nowhere to keep what is learned (a loop the daemon never looked at)
                return self._all(s)[0]
            state = (row.tally or {}).get(self.part) or {}
            version = (row.tally or {}).get("version", 0)
            if state.get("fingerprint") == self.fingerprint:
                counts, changed, marks = self._changed_since(s, state)
            else:
                counts, changed = self._all(s)
                marks = self._first_marks(s, now, state)
            marks = {name: _advance(m, now, self._newest_id(s, name)) for name, m in marks.items()}
        new_state = {
            "fingerprint": self.fingerprint,
            "checked_at": now.isoformat(),
            "until": self.until.isoformat() if self.until else None,
            "marks": marks,
            "examples": counts.examples,
            "varied": counts.varied,
        }
        self._store(version, new_state, changed, reset=state.get("fingerprint") != self.fingerprint)
        return counts

    # -- counting --------------------------------------------------------------------------------

    def _all(self, s: Session) -> tuple[Counts, dict[str, tuple[int, int]]]:
        """Every prompt's count, from a dry build of the whole selection."""
        per: dict[str, Counts] = {}
        total = Counts(0, 0)
        for item in _build(s, self.settings, self.kind, self.f):
            _add(per.setdefault(_prompt_of(item), Counts(0, 0)), self.kind, item)
            _add(total, self.kind, item)
        return total, {key: (c.examples, c.varied) for key, c in per.items()}

    def _changed_since(
        self, s: Session, state: dict[str, Any]
    ) -> tuple[Counts, dict[str, tuple[int, int]], dict[str, list[list[Any]]]]:
        """The totals after re-counting the prompts that changed since ``state`` was stored."""
        marks = state.get("marks") or {}
        since = dt.datetime.fromisoformat(state["checked_at"]) - LAG
        # No DISTINCT in these queries: SQLite would walk the whole prompt-hash index to produce it.
        keys = set(s.scalars(select(Trajectory.prompt_hash).where(Trajectory.ingested_at >= since)))
        before = dt.datetime.fromisoformat(state["until"]) if state.get("until") else None
        if self.until is not None and before is not None and before != self.until:
            # Rows whose created_at the window's end moved past (either way) enter or leave it.
            lo, hi = sorted((before, self.until))
            keys.update(
                s.scalars(
                    select(Trajectory.prompt_hash).where(
                        Trajectory.created_at >= lo, Trajectory.created_at < hi
                    )
                )
            )
        if self.needs_scores:
            keys.update(self._touched(s, Score, _mark(marks.get("scores"), since)))
        if self.needs_feedback:
            keys.update(
                self._touched(
                    s, Feedback, _mark(marks.get("feedback"), since), Feedback.correction.is_not(None)
                )
            )
        changed: dict[str, tuple[int, int]] = {}
        examples, varied = state["examples"], state["varied"]
        ordered = sorted(keys)
        for start in range(0, len(ordered), _CHUNK):
            chunk = ordered[start : start + _CHUNK]
            was_examples, was_varied = s.execute(
                select(
                    func.coalesce(func.sum(LoopTally.examples), 0),
                    func.coalesce(func.sum(LoopTally.varied), 0),
                ).where(
                    LoopTally.loop == self.loop, LoopTally.part == self.part, LoopTally.prompt_hash.in_(chunk)
                )
            ).one()
            examples, varied = examples - was_examples, varied - was_varied
            now_counts = {key: Counts(0, 0) for key in chunk}
            for item in _build(s, self.settings, self.kind, self.f, chunk):
                _add(now_counts.setdefault(_prompt_of(item), Counts(0, 0)), self.kind, item)
            for key, c in now_counts.items():
                changed[key] = (c.examples, c.varied)
                examples, varied = examples + c.examples, varied + c.varied
        return Counts(examples, varied), changed, {k: v for k, v in marks.items() if k in self._mark_names()}

    def _touched(self, s: Session, table: Any, after_id: int, *where: Any) -> set[str]:
        """Prompts of the trajectories named by rows of ``table`` (scores, feedback) above ``after_id``."""
        # Two look-ups, each by its own index: as one (IN a subquery) PostgreSQL may hash-join
        # against a scan of every trajectory when it misjudges how many ids the subquery gives.
        named = sorted(set(s.scalars(select(table.trajectory_id).where(table.id > after_id, *where))))
        keys: set[str] = set()
        for start in range(0, len(named), _CHUNK):
            chunk = named[start : start + _CHUNK]
            keys.update(s.scalars(select(Trajectory.prompt_hash).where(Trajectory.id.in_(chunk))))
        return keys

    # -- marks: which score and feedback ids a check has seen ------------------------------------------

    def _mark_names(self) -> list[str]:
        return [
            name for name, need in (("scores", self.needs_scores), ("feedback", self.needs_feedback)) if need
        ]

    def _first_marks(self, s: Session, now: dt.datetime, state: dict[str, Any]) -> dict[str, list[list[Any]]]:
        """Marks for a tally that starts over: the old ones still hold (they say nothing of the
        selection); else one that every id written since ``now - LAG`` is above."""
        old = state.get("marks") or {}
        marks: dict[str, list[list[Any]]] = {}
        for name in self._mark_names():
            if old.get(name):
                marks[name] = old[name]
            elif name == "scores":
                # Scores are stamped by the server before they are written: those stamped before
                # now - 2 LAG were written before now - LAG, so anything written later has a larger id.
                first = s.scalar(select(func.max(Score.id)).where(Score.created_at < now - 2 * LAG)) or 0
                marks[name] = [[(now - LAG).isoformat(), first]]
            else:
                # Feedback carries the sender's time, not the server's: nothing bounds it, so every
                # correction counts as new until a mark of this tally's own is LAG old.
                marks[name] = [[_NEVER.isoformat(), 0]]
        return marks

    def _newest_id(self, s: Session, name: str) -> int:
        table = Score if name == "scores" else Feedback
        return s.scalar(select(func.max(table.id))) or 0

    # -- storing ---------------------------------------------------------------------------------------

    def _store(
        self, version: int, state: dict[str, Any], changed: dict[str, tuple[int, int]], reset: bool
    ) -> None:
        with self.db.session() as s:
            row = s.get(LoopState, self.loop, with_for_update=True)
            if row is None or (row.tally or {}).get("version", 0) != version:
                # Another check stored its counts since this one read them: keep theirs; this
                # check's own counts still answer for what it saw.
                return
            part = (LoopTally.loop == self.loop, LoopTally.part == self.part)
            if reset:
                s.execute(delete(LoopTally).where(*part))
            else:
                keys = sorted(changed)
                for start in range(0, len(keys), _CHUNK):
                    s.execute(
                        delete(LoopTally).where(
                            *part, LoopTally.prompt_hash.in_(keys[start : start + _CHUNK])
                        )
                    )
            rows = [
                {"loop": self.loop, "part": self.part, "prompt_hash": key, "examples": e, "varied": v}
                for key, (e, v) in changed.items()
                if e or v
            ]
            for start in range(0, len(rows), 5000):
                s.execute(insert(LoopTally), rows[start : start + 5000])
            if reset and self.db.dialect == "postgresql":
                # Fresh statistics for the rows just written: without them PostgreSQL reads the whole
                # table to find a few hundred prompts, until autovacuum gets round to it.
                s.execute(text("ANALYZE loop_tallies"))
            row.tally = {**(row.tally or {}), self.part: state, "version": version + 1}


def _mark(marks: list[list[Any]] | None, since: dt.datetime) -> int:
    """The id every row written after ``since`` is above: the newest mark taken at or before then."""
    best = 0
    for taken, newest in marks or ():
        if dt.datetime.fromisoformat(taken) <= since:
            best = newest
    return best


def _advance(marks: list[list[Any]], now: dt.datetime, newest: int) -> list[list[Any]]:
    """Add this check's mark; keep what the next check may need (those younger than LAG, and the
    newest older one)."""
    taken = utcnow()  # after reading ``newest``: ids written from here on are above it
    old = [m for m in marks if dt.datetime.fromisoformat(m[0]) <= now - LAG]
    young = [m for m in marks if dt.datetime.fromisoformat(m[0]) > now - LAG]
    return old[-1:] + young + [[taken.isoformat(), newest]]


@contextlib.contextmanager
def _snapshot(db: Database) -> Iterator[Session]:
    """A read transaction that sees one state of the database throughout (the counts must add up)."""
    with db.read_session() as s:
        if db.dialect == "postgresql":
            s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        yield s
