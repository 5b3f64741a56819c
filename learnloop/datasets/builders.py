"""The builders: trajectories in, examples in TRL's conversational formats out.

Each builder is a generator of :class:`Item` over rows streamed from the database in chunks, and
notes in a :class:`BuildReport` why every row it passes over was left out.

- SFT ``{"messages": [...]}``: top-scored trajectories (min reward and/or top fraction), teacher
  traces regardless of reward (distillation), and trajectories whose feedback carries a correction
  (the prompt followed by the corrected answer).
- DPO ``{"prompt": [...], "chosen": [...], "rejected": [...]}``: within a group sharing one prompt,
  the best is paired with the worst, the second best with the second worst, ... while the reward
  gap is at least the margin; plus (correction, original answer) pairs from feedback.
- GRPO ``{"prompt": [...], "completions": [[...], ...], "rewards": [...]}``: groups of at least k
  scored trajectories sharing a prompt; group-normalised advantages go into the stats.
- KTO ``{"prompt": [...], "completion": [...], "label": bool}``: unpaired good and bad answers, from the
  combined reward (feedback included): desirable at or above ``min_reward`` (default 0.5), undesirable
  below it (or at most ``max_undesirable_reward`` when set: the answers in between are left out); a
  feedback correction gives the corrected answer as desirable and the original one as undesirable.
- prompts ``{"prompt": [...], "completion"?, "reward"?, "scenario", "tags", "metadata", "tools"?, "id"}``:
  one record per distinct prompt, for rollouts (online GRPO, RFT): the policy answers it itself; the
  best-rewarded stored answer comes along as ``completion`` (RFT may train it if it passes its bar).
- holdout ``{"id", "prompt", "completion", "reward", "scenario"}``: the held-out split, for evaluation.

Every builder also takes ``prompts``: build only from the rows with these prompt hashes, so that a
caller can rebuild the examples of a few prompts (the daemon's checks re-count only the prompts
that changed; no example spans two prompts). SFT's ``top_fraction`` still ranks the whole selection.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from learnloop.config import ScoringSettings
from learnloop.datasets.filters import (
    ROW_COLUMNS,
    DatasetFilters,
    group_columns,
    latest_corrections,
    stream_rows,
)
from learnloop.datasets.guardrails import (
    Conversation,
    check_messages,
    conversation_text,
    correction_message,
    split_prompt,
)
from learnloop.scoring.combine import CombineRule, combined_rewards
from learnloop.store.models import Source, Split, Trajectory
from learnloop.store.query import chunks

_MESSAGE_INDEX = re.compile(r"message \d+")
# The [scoring] settings (weights + combine rule), or just weights: how scores become one reward.
RewardRule = ScoringSettings | CombineRule | Mapping[str, float]
MAX_LISTED = 1000  # rejected rows and GRPO groups listed one by one in the stats; the rest are counted
KTO_DEFAULT_MIN_REWARD = 0.5  # the desirable bar: a thumbs up, success, 4-5 stars, a passed verifier


@dataclass
class Item:
    id: str
    record: dict[str, Any]
    conversations: list[Conversation]  # what training will see, for the length report
    text: str  # what duplicate detection compares
    reward: float | None = None


@dataclass
class BuildReport:
    funnel: Counter[str] = field(default_factory=Counter)
    rejected: list[dict[str, str]] = field(default_factory=list)
    rejected_count: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    groups: list[dict[str, Any]] = field(default_factory=list)
    group_summary: Counter[str] = field(default_factory=Counter)

    def reject(self, row_id: str, reason: str) -> None:
        self.rejected_count += 1
        self.rejected_by_reason[_MESSAGE_INDEX.sub("message N", reason)] += 1
        if len(self.rejected) < MAX_LISTED:
            self.rejected.append({"id": row_id, "reason": reason})

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "funnel": dict(self.funnel),
            "rejected": {
                "count": self.rejected_count,
                "by_reason": dict(self.rejected_by_reason.most_common()),
                "items": self.rejected,
                "listed": len(self.rejected),
            },
        }
        if self.groups or self.group_summary:
            out["groups"] = {**dict(self.group_summary), "items": self.groups, "listed": len(self.groups)}
        return out


def _val(v: Any) -> Any:
    return getattr(v, "value", v)


def _rows_with_rewards(
    session: Session, f: DatasetFilters, split: Split, weights: RewardRule, chunk_size: int, **kw: Any
) -> Iterator[tuple[Any, float | None]]:
    for chunk in stream_rows(session, f, split, chunk_size=chunk_size, **kw):
        rewards = combined_rewards(session, [r.id for r in chunk], weights)
        for row in chunk:
            yield row, rewards.get(row.id)


def _top_fraction_threshold(
    session: Session, f: DatasetFilters, weights: RewardRule, chunk_size: int
) -> float | None:
    """The reward the best ``top_fraction`` of scored rows reach
    (teacher rows ranked only if they must pass)."""
    rewards = []
    columns = (Trajectory.id, Trajectory.source, Trajectory.tags)  # no messages: this pass only ranks
    for chunk in stream_rows(session, f, Split.train, chunk_size=chunk_size, columns=columns):
        ranked = [
            r.id for r in chunk if not (f.teacher_bypass_reward and _val(r.source) == Source.teacher.value)
        ]
        rewards.extend(combined_rewards(session, ranked, weights).values())
    if not rewards or f.top_fraction is None:
        return None
    rewards.sort(reverse=True)
    return rewards[max(1, math.ceil(len(rewards) * f.top_fraction)) - 1]


def build_sft(
    session: Session,
    f: DatasetFilters,
    weights: RewardRule,
    report: BuildReport,
    chunk_size: int,
    prompts: Sequence[str] | None = None,
) -> Iterator[Item]:
    threshold = _top_fraction_threshold(session, f, weights, chunk_size) if f.top_fraction else None
    corrections = latest_corrections(session, f, Split.train, prompts) if f.include_corrections else {}
    reward_bar = f.min_reward is not None or f.top_fraction is not None
    for row, reward in _rows_with_rewards(session, f, Split.train, weights, chunk_size, prompts=prompts):
        report.funnel["scanned"] += 1
        if row.id in corrections:
            fid, correction = corrections[row.id]
            item = _corrected_sft(row, fid, correction, report)
            if item is not None:
                report.funnel["corrections"] += 1
                yield item
            continue
        teacher = _val(row.source) == Source.teacher.value
        if reward_bar and not (teacher and f.teacher_bypass_reward):
            if reward is None:
                report.funnel["unscored"] += 1
                continue
            if f.min_reward is not None and reward < f.min_reward:
                report.funnel["below_min_reward"] += 1
                continue
            if threshold is not None and reward < threshold:
                report.funnel["below_top_fraction"] += 1
                continue
        reason = check_messages(row.messages)
        if reason:
            report.reject(row.id, reason)
            continue
        report.funnel["teacher" if teacher else "scored"] += 1
        yield Item(
            row.id, {"messages": row.messages}, [row.messages], conversation_text(row.messages), reward
        )


def _corrected_sft(row: Any, fid: int, correction: Any, report: BuildReport) -> Item | None:
    reason = check_messages(row.messages, need_completion=False)
    msg, why = correction_message(correction)
    if reason or msg is None:
        report.reject(f"fb:{fid}", reason or why or "unusable correction")
        return None
    prompt, _ = split_prompt(row.messages)
    messages = prompt + [msg]
    return Item(f"fb:{fid}", {"messages": messages}, [messages], conversation_text(messages))


@dataclass
class _Member:
    id: str
    prompt: Conversation
    completion: Conversation
    reward: float


def _groups(
    session: Session,
    f: DatasetFilters,
    weights: RewardRule,
    report: BuildReport,
    chunk_size: int,
    prompts: Sequence[str] | None,
) -> Iterator[tuple[tuple[Any, ...], list[_Member]]]:
    """Scored, well-formed rows grouped by ``f.group_by`` (rows arrive sorted,
    so one group is in memory at a time)."""
    assert f.group_by is not None
    cols = group_columns(f.group_by)
    extra = [c.is_not(None) for c in cols]
    key_names = [c.key for c in cols]
    current: tuple[Any, ...] | None = None
    members: list[_Member] = []
    for row, reward in _rows_with_rewards(
        session, f, Split.train, weights, chunk_size, order_by=cols, extra_where=extra, prompts=prompts
    ):
        report.funnel["scanned"] += 1
        key = tuple(getattr(row, k) for k in key_names)
        if key != current:
            if current is not None:
                yield current, members
            current, members = key, []
        if reward is None:
            report.funnel["unscored"] += 1
            continue
        reason = check_messages(row.messages)
        if reason:
            report.reject(row.id, reason)
            continue
        prompt, completion = split_prompt(row.messages)
        members.append(_Member(row.id, prompt, completion, reward))
    if current is not None:
        yield current, members


def build_dpo(
    session: Session,
    f: DatasetFilters,
    weights: RewardRule,
    report: BuildReport,
    chunk_size: int,
    prompts: Sequence[str] | None = None,
) -> Iterator[Item]:
    min_size = f.min_group_size or 2
    margin = f.min_margin or 0.0
    for _key, members in _groups(session, f, weights, report, chunk_size, prompts):
        if len(members) < min_size:
            report.funnel["in_small_groups"] += len(members)
            continue
        report.group_summary["groups"] += 1
        ranked = sorted(members, key=lambda m: (-m.reward, m.id))
        i, j, pairs = 0, len(ranked) - 1, 0
        # Disjoint pairs from the outside in: the gap can only shrink, so stop at the first too-small one.
        while i < j and pairs < (f.max_pairs_per_group or 1):
            best, worst = ranked[i], ranked[j]
            if best.reward - worst.reward < margin or best.reward == worst.reward:
                report.funnel["pairs_below_margin"] += 1
                break
            yield _pair(
                f"{best.id}>{worst.id}",
                best.prompt,
                best.completion,
                worst.completion,
                best.reward - worst.reward,
            )
            i, j, pairs = i + 1, j - 1, pairs + 1
        report.funnel["pairs"] += pairs
    if f.include_corrections:
        yield from _correction_pairs(session, f, report, prompts)


def _pair(
    item_id: str, prompt: Conversation, chosen: Conversation, rejected: Conversation, gap: float | None
) -> Item:
    return Item(
        item_id,
        {"prompt": prompt, "chosen": chosen, "rejected": rejected},
        [prompt + chosen, prompt + rejected],
        conversation_text(prompt + chosen) + "\n---\n" + conversation_text(rejected),
        gap,
    )


def _correction_pairs(
    session: Session, f: DatasetFilters, report: BuildReport, prompts: Sequence[str] | None
) -> Iterator[Item]:
    corrections = latest_corrections(session, f, Split.train, prompts)
    ids = sorted(corrections)
    for chunk in chunks(ids):
        rows = session.execute(select(Trajectory.id, Trajectory.messages).where(Trajectory.id.in_(chunk)))
        messages_by_id: dict[str, Any] = {tid: msgs for tid, msgs in rows}
        for tid in chunk:
            fid, correction = corrections[tid]
            messages = messages_by_id[tid]
            reason = check_messages(messages)
            msg, why = correction_message(correction)
            if reason or msg is None:
                report.reject(
                    f"fb:{fid}", f"trajectory {tid}: {reason}" if reason else why or "unusable correction"
                )
                continue
            prompt, completion = split_prompt(messages)
            report.funnel["correction_pairs"] += 1
            yield _pair(f"fb:{fid}", prompt, [msg], completion, None)


def build_grpo(
    session: Session,
    f: DatasetFilters,
    weights: RewardRule,
    report: BuildReport,
    chunk_size: int,
    prompts: Sequence[str] | None = None,
) -> Iterator[Item]:
    k = f.min_group_size or 2
    for key, members in _groups(session, f, weights, report, chunk_size, prompts):
        if len(members) < k:
            report.funnel["in_small_groups"] += len(members)
            continue
        rewards = [m.reward for m in members]
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
        # Same normalisation as GRPO: (r - mean) / (std + eps); a group with one reward teaches nothing.
        advantages = [round((r - mean) / (std + 1e-4), 6) for r in rewards]
        report.group_summary["groups"] += 1
        report.group_summary["trajectories"] += len(members)
        if std == 0:
            report.group_summary["zero_variance_groups"] += 1
        item_id = "|".join(m.id for m in members)
        if len(report.groups) < MAX_LISTED:
            report.groups.append(
                {
                    "key": list(key)[:-1] or [key[-1]],
                    "size": len(members),
                    "mean": round(mean, 6),
                    "std": round(std, 6),
                    "advantages": advantages,
                }
            )
        prompt = members[0].prompt
        completions = [m.completion for m in members]
        yield Item(
            item_id,
            {"prompt": prompt, "completions": completions, "rewards": rewards},
            [prompt + c for c in completions],
            conversation_text(prompt) + "\n---\n" + "\n---\n".join(conversation_text(c) for c in completions),
            mean,
        )


def build_kto(
    session: Session,
    f: DatasetFilters,
    weights: RewardRule,
    report: BuildReport,
    chunk_size: int,
    prompts: Sequence[str] | None = None,
) -> Iterator[Item]:
    good_min = KTO_DEFAULT_MIN_REWARD if f.min_reward is None else f.min_reward
    bad_max = f.max_undesirable_reward
    corrections = latest_corrections(session, f, Split.train, prompts) if f.include_corrections else {}
    for row, reward in _rows_with_rewards(session, f, Split.train, weights, chunk_size, prompts=prompts):
        report.funnel["scanned"] += 1
        if row.id in corrections:
            yield from _kto_correction(row, *corrections[row.id], report)
            continue
        if reward is None:
            report.funnel["unscored"] += 1
            continue
        if reward >= good_min:
            label = True
        elif bad_max is None or reward <= bad_max:
            label = False
        else:
            report.funnel["between_bars"] += 1
            continue
        reason = check_messages(row.messages)
        if reason:
            report.reject(row.id, reason)
            continue
        report.funnel["desirable" if label else "undesirable"] += 1
        yield _kto_item(row.id, row.messages, label, reward)


def _kto_item(item_id: str, messages: Conversation, label: bool, reward: float | None) -> Item:
    prompt, completion = split_prompt(messages)
    record = {"prompt": prompt, "completion": completion, "label": label}
    return Item(item_id, record, [messages], conversation_text(messages), reward)


def _kto_correction(row: Any, fid: int, correction: Any, report: BuildReport) -> Iterator[Item]:
    """The corrected answer is desirable; the answer it corrected is undesirable."""
    msg, why = correction_message(correction)
    reason = check_messages(row.messages)
    if reason or msg is None:
        report.reject(f"fb:{fid}", reason or why or "unusable correction")
        return
    prompt, _ = split_prompt(row.messages)
    report.funnel["corrections"] += 1
    report.funnel["desirable"] += 1
    report.funnel["undesirable"] += 1
    yield _kto_item(f"fb:{fid}", prompt + [msg], True, None)
    yield _kto_item(row.id, row.messages, False, None)


# Labelled: the attribute is `meta` but the column `metadata`, and a per-prompt count (only_prompts)
# reads the rows through a CTE whose columns carry the column names.
PROMPT_COLUMNS = (*ROW_COLUMNS, Trajectory.meta.label("meta"), Trajectory.tools)


def build_prompts(
    session: Session,
    f: DatasetFilters,
    weights: RewardRule,
    report: BuildReport,
    chunk_size: int,
    prompts: Sequence[str] | None = None,
) -> Iterator[Item]:
    """One record per distinct prompt; rows arrive sorted by prompt hash, so one prompt is in memory."""
    best: tuple[Any, float | None] | None = None
    current = None
    answers = 0
    order = group_columns("prompt")
    for row, reward in _rows_with_rewards(
        session,
        f,
        Split.train,
        weights,
        chunk_size,
        order_by=order,
        extra_where=[c.is_not(None) for c in order],
        columns=PROMPT_COLUMNS,
        prompts=prompts,
    ):
        report.funnel["scanned"] += 1
        if row.prompt_hash != current:
            if best is not None:
                yield _prompt_item(*best, answers, report)
            current, best, answers = row.prompt_hash, None, 0
        reason = check_messages(row.messages, need_completion=False)
        if reason:
            report.reject(row.id, reason)
            continue
        answers += 1
        # The best-rewarded answer comes along: rows arrive oldest first, so among equals (or when
        # none is scored) the newest wins.
        if best is None or _rank(reward) >= _rank(best[1]):
            best = (row, reward)
    if best is not None:
        yield _prompt_item(*best, answers, report)


def _rank(reward: float | None) -> tuple[bool, float]:
    return (reward is not None, reward if reward is not None else 0.0)


def _prompt_item(row: Any, reward: float | None, answers: int, report: BuildReport) -> Item:
    prompt, completion = split_prompt(row.messages)
    record: dict[str, Any] = {
        "id": row.id,
        "prompt": prompt,
        "scenario": row.scenario,
        "tags": list(row.tags or []),
        "metadata": dict(row.meta or {}),
    }
    if row.tools:
        record["tools"] = row.tools
    if completion:
        record["completion"] = completion
        if reward is not None:
            record["reward"] = reward
    report.funnel["prompts"] += 1
    report.funnel["answers"] += answers
    return Item(row.id, record, [prompt + completion], conversation_text(prompt), reward)


def build_holdout(
    session: Session,
    f: DatasetFilters,
    weights: RewardRule,
    report: BuildReport,
    chunk_size: int,
    prompts: Sequence[str] | None = None,
) -> Iterator[Item]:
    for row, reward in _rows_with_rewards(session, f, Split.holdout, weights, chunk_size, prompts=prompts):
        report.funnel["scanned"] += 1
        if f.min_reward is not None and (reward is None or reward < f.min_reward):
            report.funnel["below_min_reward"] += 1
            continue
        reason = check_messages(row.messages, need_completion=False)
        if reason:
            report.reject(row.id, reason)
            continue
        prompt, completion = split_prompt(row.messages)
        record = {
            "id": row.id,
            "prompt": prompt,
            "completion": completion,
            "reward": reward,
            "scenario": row.scenario,
        }
        yield Item(row.id, record, [row.messages], conversation_text(row.messages), reward)


BUILDERS = {
    "sft": build_sft,
    "dpo": build_dpo,
    "grpo": build_grpo,
    "kto": build_kto,
    "prompts": build_prompts,
    "holdout": build_holdout,
}
