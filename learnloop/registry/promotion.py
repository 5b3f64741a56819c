"""Promote, roll back, restore: moving what serves and what the next training continues from.

Every alias move goes through ``store.aliases.move_alias`` in the same transaction as the
version's state change, so the append-only alias log says who moved it, when, why and on which
evaluation. Servers watch the alias rows and converge on them (serving's part); nothing here
needs a server to be running.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from learnloop.config import Settings
from learnloop.errors import Conflict, NotFound
from learnloop.registry import files as fs
from learnloop.registry.versions import HEAD_KEY
from learnloop.store.aliases import DEFAULT_ALIAS, move_alias
from learnloop.store.db import Database
from learnloop.store.events import record_event
from learnloop.store.models import (
    Alias,
    AliasEvent,
    Control,
    Evaluation,
    LoopState,
    ModelVersion,
    VersionState,
    utcnow,
)

# Alias-log actions that change what serves ("set": serving's `learnloop alias set`; "split" does not).
MOVES = ("promote", "force", "rollback", "restore", "set")


def local_actor() -> str:
    """Who runs a CLI command: the local user."""
    try:
        return f"local:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no user name (containers): still say where it came from
        return "local"


def _usable(row: ModelVersion) -> Path:
    """The version's folder, checked byte for byte against its recorded hashes."""
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


def _gate_evidence(session: Session, row: ModelVersion, evaluation_id: int | None) -> tuple[bool, str]:
    """(passed, description) of the gate verdict a promotion would rest on."""
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


def check_servable(
    session: Session, version_id: str, *, force: bool = False, override: str = "Promote with --force"
) -> tuple[bool, str]:
    """(passed, evidence) of serving ``version_id``, for every way an alias is moved (promote, serving's
    `alias set` and PUT /v1/aliases/{name}, the dashboard): NotFound for an unknown id; Conflict when its
    files are gone or changed, or when the gate did not pass it (rejected, or never evaluated) and
    ``force`` is off, naming the reason and ``override``, the way to serve it anyway."""
    row = session.get(ModelVersion, version_id)
    if row is None:
        raise NotFound(f"No model version {version_id!r}; `learnloop versions list` shows them.")
    _usable(row)
    passed, evidence = _gate_evidence(session, row, None)
    if not passed and not force:
        raise Conflict(f"Not serving {version_id}: {evidence}. {override} to override the gate.")
    return passed, evidence


def _alias_row(session: Session, alias: str) -> Alias | None:
    return session.get(Alias, alias)


def _retire(session: Session, version_id: str | None, alias: str) -> None:
    """The version that stopped serving on ``alias`` is archived unless another alias still serves it."""
    if version_id is None:
        return
    others = session.scalars(select(Alias).where(Alias.version_id == version_id, Alias.name != alias)).first()
    row = session.get(ModelVersion, version_id)
    if row is not None and others is None and row.state == VersionState.serving:
        row.state = VersionState.archived


def _serve(
    session: Session,
    row: ModelVersion | None,
    alias: str,
    *,
    action: str,
    actor: str | None,
    reason: str | None,
    evaluation_id: int | None,
) -> AliasEvent:
    current = _alias_row(session, alias)
    previous = current.version_id if current is not None else None
    event = move_alias(
        session,
        alias,
        row.id if row else None,
        action=action,
        actor=actor,
        reason=reason,
        evaluation_id=evaluation_id,
    )
    if previous != (row.id if row else None):
        _retire(session, previous, alias)
    if row is not None:
        row.state = VersionState.serving
        row.ever_served = True
        row.promoted_at = utcnow()
    return event


def promote(
    db: Database,
    settings: Settings,
    version_id: str,
    *,
    alias: str = DEFAULT_ALIAS,
    actor: str | None = None,
    reason: str | None = None,
    evaluation_id: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Make ``version_id`` what ``alias`` serves.

    Needs a passing gate verdict (the version's latest, or that of ``evaluation_id``); a version
    the gate rejected, or one never evaluated, is promoted only with ``force`` (logged as such).
    ``version_id`` "base" serves the base model (always a forced move: there is nothing to gate).
    """
    with db.session() as session:
        if version_id == "base":
            row, passed, evidence = None, True, "serving the base model"  # the fallback needs no gate
        else:
            row = session.get(ModelVersion, version_id)
            if row is None:
                raise NotFound(f"No model version {version_id!r}; `learnloop versions list` shows them.")
            _usable(row)
            passed, evidence = _gate_evidence(session, row, evaluation_id)
            if not passed and not force:
                raise Conflict(
                    f"Not promoting {version_id}: {evidence}. Promote with --force to override the gate."
                )
            if evaluation_id is None and passed:
                evaluation_id = (row.gate or {}).get("evaluation_id")
        current = _alias_row(session, alias)
        previous = current.version_id if current is not None else None
        if current is not None and previous == (row.id if row else None):
            return {"alias": alias, "version_id": version_id, "previous": previous, "changed": False}
        action = "promote" if passed else "force"
        text = reason or evidence
        _serve(session, row, alias, action=action, actor=actor, reason=text, evaluation_id=evaluation_id)
        record_event(
            session,
            "version.promoted",
            f"{alias} -> {version_id} ({action}) by {actor or 'unknown'}: {text}",
            level="info" if passed else "warning",
            version_id=row.id if row else None,
            loop=row.loop if row else None,
            data={
                "alias": alias,
                "from": previous,
                "action": action,
                "actor": actor,
                "evaluation_id": evaluation_id,
            },
        )
    return {"alias": alias, "version_id": version_id, "previous": previous, "changed": True, "action": action}


def serving_stack(session: Session, alias: str) -> list[str | None]:
    """What the alias served, oldest first, with rolled-back entries popped: the last is serving now."""
    stack: list[str | None] = []
    events = session.scalars(select(AliasEvent).where(AliasEvent.alias == alias).order_by(AliasEvent.id))
    for ev in events:
        if ev.action not in MOVES:
            continue
        if not stack:
            stack.append(ev.from_version)
        if ev.action == "rollback":
            if len(stack) > 1:
                stack.pop()
            if stack[-1] != ev.to_version:  # the log and the stack disagree (a manual edit): trust the log
                stack.append(ev.to_version)
        elif stack[-1] != ev.to_version:
            stack.append(ev.to_version)
    return stack


def rollback(
    db: Database,
    settings: Settings,
    *,
    alias: str = DEFAULT_ALIAS,
    actor: str | None = None,
    reason: str | None = None,
) -> str | None:
    """Serve what ``alias`` served before the current version; returns it (None: the base model).

    Repeated rollbacks walk further back (v3 -> v2 -> v1 -> base), not back and forth.
    """
    with db.session() as session:
        current = _alias_row(session, alias)
        stack = serving_stack(session, alias)
        if current is None or len(stack) < 2:
            raise Conflict(f"Alias {alias!r} has no earlier version to roll back to.")
        target = stack[-2]
        row = None
        if target is not None:
            row = session.get(ModelVersion, target)
            if row is None:
                raise Conflict(
                    f"{alias!r} served {target} before, but that version was deleted; promote one explicitly."
                )
            _usable(row)
        previous = current.version_id
        text = reason or f"rollback from {previous or 'base'}"
        _serve(session, row, alias, action="rollback", actor=actor, reason=text, evaluation_id=None)
        record_event(
            session,
            "version.rolled_back",
            f"{alias}: {previous or 'base'} -> {target or 'base'} by {actor or 'unknown'}: {text}",
            level="warning",
            version_id=previous,
            data={"alias": alias, "to": target, "actor": actor},
        )
    return target


@dataclass
class Restored:
    version_id: str
    adapter_path: Path
    loop: str | None
    served: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "version_id": self.version_id,
            "adapter_path": str(self.adapter_path),
            "loop": self.loop,
            "served": self.served,
        }


def restore(
    db: Database,
    settings: Settings,
    version_id: str,
    *,
    loop: str | None = None,
    serve: bool = False,
    actor: str | None = None,
    alias: str | None = None,
    force: bool = False,
    reason: str | None = None,
) -> Restored:
    """Make ``version_id`` the head the next training continues from (its loop's, or the registry's).

    Its files are checked byte for byte first. With ``serve`` it is also promoted (action
    ``restore``; a version the gate rejected needs ``force``). The loop defaults to the version's own.
    """
    with db.session() as session:
        row = session.get(ModelVersion, version_id)
        if row is None:
            raise NotFound(f"No model version {version_id!r}.")
        folder = _usable(row)
        loop = loop or row.loop
        if loop is not None:
            state = session.get(LoopState, loop, with_for_update=True)
            if state is None:
                state = LoopState(name=loop)
                session.add(state)
            state.head_version_id = version_id
            state.updated_at = utcnow()
        else:
            head = session.get(Control, HEAD_KEY, with_for_update=True)
            if head is None:
                head = Control(key=HEAD_KEY)
                session.add(head)
            head.value = {"version_id": version_id, "actor": actor, "at": utcnow().isoformat()}
            head.updated_at = utcnow()
        text = reason or f"restore {version_id}"
        if serve:
            passed, evidence = _gate_evidence(session, row, None)
            if not passed and not force and not row.ever_served:
                raise Conflict(
                    f"Not serving {version_id}: {evidence}. Restore with --force to override the gate."
                )
            target = alias or (loop if loop and _alias_row(session, loop) is not None else DEFAULT_ALIAS)
            _serve(
                session,
                row,
                target,
                action="restore",
                actor=actor,
                reason=text,
                evaluation_id=(row.gate or {}).get("evaluation_id"),
            )
        record_event(
            session,
            "version.restored",
            f"{version_id} restored as head{' of ' + loop if loop else ''}"
            f"{' and served' if serve else ''} by {actor or 'unknown'}",
            version_id=version_id,
            loop=loop,
            data={"actor": actor, "serve": serve},
        )
    return Restored(version_id, folder, loop, serve)


def head_version(db: Database, loop: str | None = None) -> str | None:
    """The version the next training of ``loop`` (or, without one, of the registry) continues from."""
    with db.read_session() as session:
        if loop is not None:
            state = session.get(LoopState, loop)
            return state.head_version_id if state else None
        head = session.get(Control, HEAD_KEY)
        return (head.value or {}).get("version_id") if head else None
