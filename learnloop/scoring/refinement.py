"""The refinement penalty: a user who asks again for what they just asked did not get it.

Within one trajectory, a user message that follows an assistant answer and re-asks the previous
request (rephrased) gives the trajectory a ``refinement`` score of -1.0. Across the trajectories of
one ``group`` (a chat app that records each call separately), trajectory B re-asking trajectory
A's request (A just before B in time) gives A that score. ``[scoring] refinement_threshold`` sets
how similar the two requests must be; ``refinement_weight`` how much the score lowers the combined
reward (see combine.py).

Similarity, and why this one: the share of *content words* (lower-cased, stop words and the usual
English inflections removed) the two requests have in common, the mean of the overlap coefficient
(shared / words of the shorter) and the Dice coefficient (2 x shared / words of both). A rephrase
keeps the task's content words and adds or drops a few ("What is Australia's capital city?" after
"What's the capital of Australia?": 0.9), while a new request changes them ("And New Zealand's
population?": 0.0). Character-level ratios (difflib, rapidfuzz's fuzz.ratio) score word order and
spelling, which rephrasing changes and new requests of the same form keep, so they rate rephrases
lower and look-alike new requests higher. It needs only the standard library and costs microseconds.
Openers that continue ("now", "next", "also", "what about") mark a new request and halve the
similarity; openers that correct ("no,", "I meant", "that's not what I asked", "try again") mark a
re-ask and count as reaching the threshold. Known limit: a new request built on the same template
("Translate 'good night' into Spanish" after "... 'good morning' ...") shares most content words
and reads as a re-ask; no word-overlap measure can tell them apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from learnloop.scoring.registry import reward
from learnloop.scoring.view import TrajectoryView, message_text

VERSION = "1"

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    """a an the to of for in on at by with and or but is are was were be been am i me my you your it its
    this that these those can could would will should please do does did how what which who whom whose
    why when where there here just now again also so some any us we our they them their he she his her
    not no yes ok okay thanks thank tell give show explain make about instead as into from want need
    like get let one""".split()
)
_CONTINUE = re.compile(
    r"^\s*(?:now|next|also|then|another|and|ok(?:ay)?[,.!]?\s+now|great[,.!]?\s+now|thanks?[,.!]?\s+now|"
    r"what about|how about)\b",
    re.IGNORECASE,
)
_CORRECT = re.compile(
    r"^\s*(?:no[,.!]|nope\b|that'?s not what i|that is not what i|not what i (?:asked|meant|wanted)|"
    r"i meant\b|i asked\b|i said\b|try again\b|wrong[,.!]|that'?s wrong|that is wrong|"
    r"still (?:wrong|not)\b)",
    re.IGNORECASE,
)


def content_words(text: str) -> set[str]:
    """Lower-cased words without stop words, possessives and common inflections."""
    out = set()
    for word in _WORD.findall(text.lower().replace("'s", "").replace("\u2019s", "")):
        if word in _STOP:
            continue
        for suffix in ("ing", "ies", "es", "s", "ed"):
            if len(word) > 4 and word.endswith(suffix):
                word = word[: -len(suffix)]
                break
        out.add(word)
    return out


def similarity(request: str, again: str) -> float:
    """How much ``again`` repeats ``request``: mean of overlap and Dice
    coefficients of content words, in [0, 1]."""
    a, b = content_words(request), content_words(again)
    if not a or not b:
        return 0.0
    shared = len(a & b)
    return (shared / min(len(a), len(b)) + 2 * shared / (len(a) + len(b))) / 2


def is_reask(request: str, again: str, threshold: float = 0.6) -> bool:
    """Whether the user message ``again`` asks once more for ``request`` (see the module docstring)."""
    if _CORRECT.match(again):
        return True
    score = similarity(request, again)
    if _CONTINUE.match(again):
        score /= 2
    return score >= threshold


def _text(message: Mapping[str, Any]) -> str:
    return message_text(message).strip()


def reasks_within(messages: Sequence[Mapping[str, Any]], threshold: float = 0.6) -> int:
    """How many user messages in ``messages`` re-ask the request before an assistant answer."""
    count = 0
    request: str | None = None
    answered = False
    for m in messages:
        role = m.get("role")
        if role == "user":
            text = _text(m)
            if request is not None and answered and text and is_reask(request, text, threshold):
                count += 1
            if text:
                request, answered = text, False
        elif role == "assistant" and _text(m):
            answered = True
    return count


def last_request(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The last user message before the final assistant answer (or the last user message at all)."""
    request = None
    for m in messages:
        if m.get("role") == "user" and _text(m):
            request = _text(m)
    return request


@reward("refinement", version=VERSION)
def refinement(t: TrajectoryView) -> float | None:
    """-1.0 when a user message re-asks the request the answer before it was given; else not applicable.

    Threshold: scoring.refinement_threshold. Across a group's trajectories, see apply_group_refinement.
    """
    users = sum(1 for m in t.messages if m.get("role") == "user")
    if users < 2:
        return None  # the common case: one request, nothing to compare
    return -1.0 if reasks_within(t.messages, t.config.refinement_threshold) else None


def group_refinements(
    members: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], threshold: float = 0.6
) -> list[str]:
    """Ids of group members (in time order) whose request the next member asks again."""
    out = []
    for (tid, msgs), (_, next_msgs) in zip(members, members[1:]):
        a, b = last_request(msgs), last_request(next_msgs)
        if a and b and a != b and is_reask(a, b, threshold):
            out.append(tid)
    return out


GROUP_RUN = "refinement_group"  # the score_runs name marking "compared with its successor"


def apply_group_refinement(db: Any, config: Any = None, *, batch_groups: int = 200) -> int:
    """Score ``refinement = -1`` on group members whose successor in the group asks again; returns how many.

    A member is compared once its successor exists (recorded in ``score_runs``), so each run only
    loads the groups that have a member not compared yet. Idempotent: re-running adds nothing.
    """
    from sqlalchemy import and_, exists, not_, select

    from learnloop.config import ScoringSettings
    from learnloop.store.models import Score, ScoreRun, ScoreSource, Trajectory, utcnow
    from learnloop.store.query import chunks, insert_ignoring_duplicates

    config = config or ScoringSettings()
    done = exists().where(
        and_(ScoreRun.trajectory_id == Trajectory.id, ScoreRun.name == GROUP_RUN, ScoreRun.version == VERSION)
    )
    with db.read_session() as s:
        groups = list(
            s.scalars(
                select(Trajectory.group_id).where(Trajectory.group_id.is_not(None), not_(done)).distinct()
            )
        )
    flagged = 0
    for part in chunks(groups, batch_groups):
        with db.read_session() as s:
            rows = s.execute(
                select(Trajectory.id, Trajectory.group_id, Trajectory.messages, done.label("done"))
                .where(Trajectory.group_id.in_(part))
                .order_by(Trajectory.group_id, Trajectory.created_at, Trajectory.id)
            ).all()
        members: dict[str, list[Any]] = {}
        for r in rows:
            members.setdefault(r.group_id, []).append(r)
        now = utcnow()
        scores, runs = [], []
        for group_rows in members.values():
            reasked = set(
                group_refinements([(r.id, r.messages or []) for r in group_rows], config.refinement_threshold)
            )
            for r in group_rows[:-1]:  # the newest has no successor yet: compared on a later run
                if r.done:
                    continue
                hit = r.id in reasked
                runs.append(
                    {
                        "trajectory_id": r.id,
                        "name": GROUP_RUN,
                        "version": VERSION,
                        "outcome": "scored" if hit else "not_applicable",
                        "created_at": now,
                    }
                )
                if hit:
                    scores.append(
                        {
                            "trajectory_id": r.id,
                            "name": "refinement",
                            "value": -1.0,
                            "source": ScoreSource.heuristic,
                            "version": VERSION,
                            "idempotency_key": f"{GROUP_RUN}:{VERSION}:{r.id}",
                            "created_at": now,
                        }
                    )
        if runs:
            with db.session() as s:
                conn = s.connection()
                if scores:
                    conn.execute(insert_ignoring_duplicates(s, Score), scores)
                conn.execute(insert_ignoring_duplicates(s, ScoreRun), runs)
            flagged += len(scores)
    return flagged
