"""One way to change what serves: every alias move goes through ``move``.

Promote, rollback and restore (``promotion.py``), ``learnloop alias set`` and ``alias split``, the
``/v1/aliases`` routes, the dashboard's buttons and the daemon all end in ``move_in``. In the
caller's one transaction it

1. checks the alias name: letters, digits, ``.``, ``_`` and ``-``, and a known alias (``learnloop``,
   a loop's ``alias`` in ``[[loops]]``, or one that exists already);
2. checks, once and here only, that the target may serve (``_servable``): a version id must exist with
   its files intact, and a version the gate rejected or never evaluated needs ``force`` (a rollback,
   or a restore of a version that served before, rests on its having served);
3. writes the alias row (nothing else writes alias rows);
4. settles the state of every version the move touched (``state_of``);
5. appends one alias-log row and one event.

A move is a kind and a target. Kinds: ``promote``, ``rollback``, ``restore``, ``set`` (the main version
changes) and ``split`` (an A/B candidate gets ``share`` of the traffic and/or runs in ``shadow``; no
candidate ends the split). A target is a version id, ``base``, or an upstream provider
``upstream:<name>`` (an ``[[upstreams]]`` entry: it needs no gate and has no version state; the
move checks it is configured). A canary step is a split whose share grows, its fall-back a split
ended (``registry/canary.py``), so neither has a path around these checks.

Version states, decided by ``state_of`` alone:

- ``serving``: an alias serves it now (its version, or its A/B candidate with a share of the traffic;
  a shadow-only candidate answers no user, so it is not serving);
- ``archived``: it served before and no alias serves it now. Its files are kept (retention never
  prunes a version that served), so a rollback or ``restore --serve`` can bring it back;
- ``rejected``: it never served and its latest gate verdict is ``reject``;
- ``candidate``: it never served and the gate has not rejected it (not evaluated yet, inconclusive, or
  passed).

Whether a version's adapter files are on disk is a separate fact (``artifact_path`` is cleared when
retention prunes the files of an old candidate or rejected version; its record and state stay).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from learnloop.config import Settings
from learnloop.errors import Conflict, NotFound, ValidationFailed
from learnloop.registry import files as fs
from learnloop.store.aliases import DEFAULT_ALIAS, is_upstream, upstream_name
from learnloop.store.db import Database
from learnloop.store.events import record_event
from learnloop.store.models import Alias, AliasEvent, Evaluation, ModelVersion, VersionState, utcnow

BASE = "base"
MoveKind = Literal["promote", "rollback", "restore", "set", "split"]
MOVE_KINDS: tuple[str, ...] = ("promote", "rollback", "restore", "set", "split")
# Alias-log actions that change an alias's main version (a forced promote or set is logged as "force").
MOVES = ("promote", "force", "rollback", "restore", "set")
_EVENTS = {
    "promote": "version.promoted",
    "rollback": "version.rolled_back",
    "restore": "version.restored",
    "set": "alias.set",
    "split": "alias.split",
}
_ALIAS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION_ID = re.compile(r"^v\d+$")


@dataclass(frozen=True)
class Moved:
    """What a move did. ``version`` is what the alias serves afterwards (None: the base model)."""

    alias: str
    kind: str
    action: str  # as logged: the kind, or "force" for a promote or set the gate did not pass
    changed: bool
    previous: str | None
    version: str | None
    candidate: str | None
    split: float
    shadow: float
    evaluation_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- states


def state_of(row: ModelVersion, serving: bool) -> VersionState:
    """A version's state from the facts (see the module docstring); ``serving``: an alias serves it now."""
    if serving:
        return VersionState.serving
    if row.ever_served:
        return VersionState.archived
    if (row.gate or {}).get("verdict") == "reject":
        return VersionState.rejected
    return VersionState.candidate


def serving_ids(session: Session) -> set[str]:
    """The versions some alias serves now: its version, or its candidate while it has a share."""
    out: set[str] = set()
    for a in session.scalars(select(Alias)):
        if a.version_id:
            out.add(a.version_id)
        if a.candidate_id and a.split > 0:
            out.add(a.candidate_id)
    return out


def settle(session: Session, version_ids: set[str | None]) -> None:
    """Write the state ``state_of`` gives each of these versions (in the caller's transaction)."""
    session.flush()
    serving = serving_ids(session)
    for vid in version_ids - {None}:
        row = session.get(ModelVersion, vid)
        if row is None:
            continue
        if vid in serving and not row.ever_served:
            row.ever_served = True
        row.state = state_of(row, vid in serving)


# --------------------------------------------------------------------------- checks


def check_alias_name(session: Session, settings: Settings | None, name: str) -> None:
    """ValidationFailed for a name no alias may have; NotFound for one neither stored nor configured."""
    if not isinstance(name, str) or not _ALIAS_NAME.match(name) or name == BASE or _VERSION_ID.match(name):
        raise ValidationFailed(
            f"{name!r} cannot be an alias: use 1 to 128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit, and neither 'base' nor a version id.",
            [("alias", "invalid name")],
        )
    known = {
        DEFAULT_ALIAS,
        *(getattr(loop, "alias", None) for loop in getattr(settings, "loops", None) or []),
    }
    if name not in known and session.get(Alias, name) is None:
        listed = sorted(
            {n for n in known if n} | set(session.scalars(select(Alias.name)))  # type: ignore[arg-type]
        )
        raise NotFound(
            f"No alias {name!r}: the aliases are {', '.join(listed)}. "
            "A loop's own alias is declared with `alias = ...` in its [[loops]] entry."
        )


def usable_folder(row: ModelVersion) -> Path:
    """The version's folder, checked byte for byte against its recorded hashes (Conflict otherwise)."""
    if not row.artifact_path:
        raise Conflict(
            f"{row.id}'s adapter files were pruned by retention or removed; it cannot be served or restored."
        )
    folder = Path(row.artifact_path)
    problems = fs.verify(folder, row.files or {})
    if problems:
        raise Conflict(
            f"{row.id}'s files do not match the hashes recorded at registration: {'; '.join(problems[:3])}."
        )
    return folder


def gate_evidence(session: Session, row: ModelVersion, evaluation_id: int | None) -> tuple[bool, str]:
    """(passed, description) of the gate verdict a move would rest on (the version's latest, or
    ``evaluation_id``'s)."""
    if evaluation_id is not None:
        ev = session.get(Evaluation, evaluation_id)
        if ev is None:
            raise NotFound(f"No evaluation {evaluation_id}.")
        if ev.candidate_id != row.id:
            raise Conflict(f"Evaluation {evaluation_id} measured {ev.candidate_id}, not {row.id}.")
        gate = ev.gate or {}
    else:
        gate = row.gate or {}
    if not gate:
        return False, f"{row.id} has no gate verdict (run `learnloop eval run --candidate {row.id}`)"
    reasons = "; ".join(gate.get("reasons") or [])
    return bool(gate.get("passed")), f"gate said {gate.get('verdict')}" + (f": {reasons}" if reasons else "")


_UPSTREAM = re.compile(r"^upstream:[A-Za-z0-9][A-Za-z0-9_.-]{0,54}$")


def _version(target: str | None) -> str | None:
    """The version id or upstream target a target names (None: the base model)."""
    if target is None or target == BASE:
        return None
    if is_upstream(target):
        if not _UPSTREAM.match(target):
            raise ValidationFailed(
                f"{target!r} is not an upstream target: 'upstream:' and an [[upstreams]] name.",
                [("target", "upstream name")],
            )
        return target
    if not isinstance(target, str) or not target or len(target) > 64:
        raise ValidationFailed(
            f"{target!r} is not a version id, 'base' or 'upstream:<name>'.", [("target", "version id")]
        )
    return target


def check_upstream(settings: Settings | None, target: str) -> str:
    """NotFound unless ``target``'s upstream is in ``[[upstreams]]``; the evidence a move logs."""
    name = upstream_name(target)
    if settings is not None and settings.upstream(name) is None:
        known = ", ".join(u.name for u in settings.upstreams) or "none configured"
        raise NotFound(
            f"No upstream {name!r} in [[upstreams]] (known: {known}); add it to learnloop.toml first."
        )
    return f"serving upstream {name}"


def _servable(
    session: Session,
    kind: str,
    version_id: str,
    *,
    force: bool,
    evaluation_id: int | None,
    gated: bool,
    override: str,
) -> tuple[ModelVersion, bool, str, int | None]:
    """(row, passed, evidence, evaluation id) of serving ``version_id``: the one servability check.

    NotFound for an unknown id; Conflict when its files are gone or changed, or (``gated``) when the
    gate did not pass it and ``force`` is off, naming the reason and ``override``. A rollback, and a
    restore of a version that served before, rest on its having served.
    """
    row = session.get(ModelVersion, version_id)
    if row is None:
        raise NotFound(f"No model version {version_id!r}; `learnloop versions list` shows them.")
    usable_folder(row)
    passed, evidence = gate_evidence(session, row, evaluation_id)
    if evaluation_id is None and passed:
        evaluation_id = (row.gate or {}).get("evaluation_id")
    if kind == "rollback" or (kind == "restore" and row.ever_served):
        return row, True, evidence if passed else f"{version_id} served before", evaluation_id
    if gated and not passed and not force:
        raise Conflict(f"Not serving {version_id}: {evidence}. {override} to override the gate.")
    return row, passed, evidence, evaluation_id


# --------------------------------------------------------------------------- the move


def move(
    db: Database,
    settings: Settings | None,
    alias: str,
    kind: MoveKind,
    target: str | None,
    **options: Any,
) -> Moved:
    """``move_in`` in a transaction of its own."""
    with db.session() as session:
        return move_in(session, settings, alias, kind, target, **options)


def move_in(
    session: Session,
    settings: Settings | None,
    alias: str,
    kind: MoveKind,
    target: str | None,
    *,
    share: float = 0.0,
    shadow: float = 0.0,
    force: bool = False,
    actor: str | None = None,
    reason: str | None = None,
    evaluation_id: int | None = None,
    override: str = "Pass force",
) -> Moved:
    """Move ``alias`` (see the module docstring), inside the caller's transaction.

    ``target``: a version id or ``base`` (for ``split``: the candidate, None to end the split).
    ``share`` / ``shadow`` (split only): the candidate's share of the traffic (sticky per user), and
    the share of requests it also answers unseen. ``force`` serves a version the gate rejected or
    never evaluated (logged as forced); ``override`` says how the caller's user passes it.
    """
    if kind not in MOVE_KINDS:
        raise ValidationFailed(
            f"Unknown move {kind!r}; one of {', '.join(MOVE_KINDS)}.", [("kind", "unknown")]
        )
    check_alias_name(session, settings, alias)
    if kind == "split":
        return _split(session, settings, alias, target, share, shadow, force, actor, reason, override)
    version_id = _version(target)
    row, passed, evidence = None, True, "serving the base model"  # the fallback needs no gate
    if is_upstream(version_id):
        evidence = check_upstream(settings, version_id)  # a provider chosen by a person: no gate
    elif version_id is not None:
        row, passed, evidence, evaluation_id = _servable(
            session,
            kind,
            version_id,
            force=force,
            evaluation_id=evaluation_id,
            gated=True,
            override=override,
        )
    current = session.get(Alias, alias, with_for_update=True)
    previous = current.version_id if current is not None else None
    if current is not None and previous == version_id:
        return _moved(current, kind, kind, False, previous, None)
    if current is None:
        current = Alias(name=alias, version_id=version_id, candidate_id=None, split=0.0, shadow=0.0)
        session.add(current)
    current.version_id = version_id
    if current.candidate_id == version_id:  # the candidate became the main version: no split left
        current.candidate_id, current.split, current.shadow = None, 0.0, 0.0
    current.updated_at = utcnow()
    if row is not None:
        row.promoted_at = utcnow()
    action = "force" if kind in ("promote", "set") and not passed else kind
    text = reason or evidence
    _log(session, alias, action, previous, version_id, actor, text, evaluation_id)
    settle(session, {previous, version_id})
    record_event(
        session,
        _EVENTS[kind],
        f"{alias}: {previous or 'base'} -> {version_id or 'base'} ({action}) by {actor or 'unknown'}: {text}",
        level="warning" if action in ("force", "rollback") else "info",
        version_id=version_id or previous,
        loop=row.loop if row is not None else None,
        data={
            "alias": alias,
            "kind": kind,
            "action": action,
            "from": previous,
            "to": version_id,
            "actor": actor,
            "evaluation_id": evaluation_id,
        },
    )
    return _moved(current, kind, action, True, previous, evaluation_id)


def _split(
    session: Session,
    settings: Settings | None,
    alias: str,
    target: str | None,
    share: float,
    shadow: float,
    force: bool,
    actor: str | None,
    reason: str | None,
    override: str,
) -> Moved:
    for name, value in (("share", share), ("shadow", shadow)):
        if not 0.0 <= value <= 1.0:
            raise ValidationFailed(
                f"{name} must be between 0 and 1, got {value}.", [(name, "between 0 and 1")]
            )
    candidate = None if target is None else _version(target)
    if target is not None and candidate is None:
        raise ValidationFailed(
            "A split's candidate is a version id, not the base model.", [("candidate", "base")]
        )
    if candidate is not None and share == 0 and shadow == 0:
        raise ValidationFailed(
            "A split needs share > 0 or shadow > 0 (send no candidate to end it).", [("share", "zero")]
        )
    current = session.get(Alias, alias, with_for_update=True)
    main = current.version_id if current is not None else None
    if candidate is not None and candidate == main:
        raise ValidationFailed(f"{candidate} is what {alias!r} serves already; split to another version.")
    forced = False
    evidence = ""
    if is_upstream(candidate):
        evidence = check_upstream(settings, candidate)
    elif candidate is not None:
        # Users see the candidate's answers only through its share: the gate applies there, as for promote.
        _, passed, evidence, _ = _servable(
            session, "split", candidate, force=force, evaluation_id=None, gated=share > 0, override=override
        )
        forced = share > 0 and not passed
    if current is None and candidate is None:  # no split to end
        return Moved(alias, "split", "split", False, None, None, None, 0.0, 0.0)
    if current is None:
        current = Alias(name=alias, version_id=None, candidate_id=None, split=0.0, shadow=0.0)
        session.add(current)
    before = (current.candidate_id, current.split or 0.0, current.shadow or 0.0)
    after = (candidate, share, shadow) if candidate is not None else (None, 0.0, 0.0)
    if before == after:
        return _moved(current, "split", "split", False, main, None)
    current.candidate_id, current.split, current.shadow = after
    current.updated_at = utcnow()
    what = (
        f"split={share} shadow={shadow}" + (f" (forced: {evidence})" if forced else "")
        if candidate is not None
        else "split ended"
    )
    text = reason or what
    _log(session, alias, "split", main, candidate, actor, text, None)
    settle(session, {before[0], candidate})
    record_event(
        session,
        _EVENTS["split"],
        f"{alias}: {what} -> {candidate or 'none'} by {actor or 'unknown'}"
        + (f": {reason}" if reason else ""),
        level="warning" if forced else "info",
        version_id=candidate or before[0],
        data={
            "alias": alias,
            "kind": "split",
            "action": "split",
            "candidate": candidate,
            "previous_candidate": before[0],
            "share": share,
            "shadow": shadow,
            "forced": forced,
            "actor": actor,
        },
    )
    return _moved(current, "split", "split", True, main, None)


def _log(
    session: Session,
    alias: str,
    action: str,
    previous: str | None,
    to: str | None,
    actor: str | None,
    reason: str | None,
    evaluation_id: int | None,
) -> None:
    session.add(
        AliasEvent(
            alias=alias,
            action=action,
            from_version=previous,
            to_version=to,
            actor=actor,
            reason=reason,
            evaluation_id=evaluation_id,
        )
    )


def _moved(
    row: Alias, kind: str, action: str, changed: bool, previous: str | None, evaluation_id: int | None
) -> Moved:
    return Moved(
        alias=row.name,
        kind=kind,
        action=action,
        changed=changed,
        previous=previous,
        version=row.version_id,
        candidate=row.candidate_id,
        split=row.split or 0.0,
        shadow=row.shadow or 0.0,
        evaluation_id=evaluation_id,
    )


# --------------------------------------------------------------------------- the alias log


def log_entry(e: AliasEvent) -> dict[str, Any]:
    """One alias-log entry as every reader shows it (CLI, API, dashboard, lineage)."""
    return {
        "id": e.id,
        "alias": e.alias,
        "action": e.action,
        "from": e.from_version,
        "to": e.to_version,
        "actor": e.actor,
        "reason": e.reason,
        "evaluation_id": e.evaluation_id,
        "at": e.created_at.isoformat(),
    }


def alias_log(
    session: Session,
    *,
    alias: str | None = None,
    version: str | None = None,
    since: Any = None,
    limit: int = 200,
    oldest_first: bool = False,
) -> list[dict[str, Any]]:
    """The append-only alias log, newest first (``oldest_first`` for a version's history): every
    entry, or those of one alias, those that moved ``version`` to or from an alias, or those since a time."""
    order = AliasEvent.id if oldest_first else AliasEvent.id.desc()
    query = select(AliasEvent).order_by(order).limit(limit)
    if alias is not None:
        query = query.where(AliasEvent.alias == alias)
    if version is not None:
        query = query.where(or_(AliasEvent.to_version == version, AliasEvent.from_version == version))
    if since is not None:
        query = query.where(AliasEvent.created_at >= since)
    return [log_entry(e) for e in session.scalars(query)]


def alias_history(db: Database, alias: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """``alias_log`` in a read transaction of its own."""
    with db.read_session() as session:
        return alias_log(session, alias=alias, limit=limit)
