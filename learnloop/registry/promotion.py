"""Promote, roll back, restore: moving what serves and what the next training continues from.

Each is one kind of alias move through ``registry.aliases.move_in``, the one function that writes the
alias row, its log entry, the version states and an event in one transaction (restore also sets the
head in the same transaction). Servers watch the alias rows and converge on them (serving's part);
nothing here needs a server to be running.
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
from learnloop.registry.aliases import MOVES, move_in, usable_folder
from learnloop.registry.versions import HEAD_KEY
from learnloop.store.aliases import DEFAULT_ALIAS, is_upstream
from learnloop.store.db import Database
from learnloop.store.events import record_event
from learnloop.store.models import Alias, AliasEvent, Control, LoopState, ModelVersion, utcnow


def local_actor() -> str:
    """Who runs a CLI command: the local user."""
    try:
        return f"local:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no user name (containers): still say where it came from
        return "local"


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
    ``version_id`` "base" serves the base model (there is nothing to gate).
    """
    with db.session() as session:
        moved = move_in(
            session,
            settings,
            alias,
            "promote",
            version_id,
            force=force,
            actor=actor,
            reason=reason,
            evaluation_id=evaluation_id,
            override="Promote with --force",
        )
    out = {"alias": alias, "version_id": version_id, "previous": moved.previous, "changed": moved.changed}
    return {**out, "action": moved.action} if moved.changed else out


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
        current = session.get(Alias, alias)
        stack = serving_stack(session, alias)
        if current is None or len(stack) < 2:
            raise Conflict(f"Alias {alias!r} has no earlier version to roll back to.")
        target = stack[-2]
        if target is not None and not is_upstream(target) and session.get(ModelVersion, target) is None:
            raise Conflict(
                f"{alias!r} served {target} before, but that version was deleted; promote one explicitly."
            )
        move_in(
            session,
            settings,
            alias,
            "rollback",
            target or "base",
            actor=actor,
            reason=reason or f"rollback from {current.version_id or 'base'}",
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
        folder = usable_folder(row)
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
        moved = None
        if serve:
            # A move writes the one event of this restore (kind version.restored).
            target = alias or (loop if loop and session.get(Alias, loop) is not None else DEFAULT_ALIAS)
            moved = move_in(
                session,
                settings,
                target,
                "restore",
                version_id,
                force=force,
                actor=actor,
                reason=text,
                override="Restore with --force",
            )
        if moved is None or not moved.changed:
            record_event(
                session,
                "version.restored",
                f"{version_id} restored as head{' of ' + loop if loop else ''} by {actor or 'unknown'}",
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
