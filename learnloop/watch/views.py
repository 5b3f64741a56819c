"""The dashboard's pages as a registry: one view function per page, registered by name.

A page is a template ``<name>.html`` and a view: ``view(db, settings, params) -> dict``, the
template's context. Registering it is all a new page needs: the HTTP layer mounts every
registered page at its path, the navigation is built from the registry, and a ``live`` page's
body (``_<name>.html``) is also served alone at ``/ui/live/<name>`` (a detail page's at
``/ui/live/<name>-<key>``) for the page's periodic refresh.

    @page("jobs", "/jobs", title="Jobs", live=True)
    def jobs(db: Database, settings: Settings, params: Params) -> dict[str, Any]: ...

Views raise the domain errors (NotFound, ValidationFailed); the HTTP layer answers them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from learnloop.config import Settings
from learnloop.errors import NotFound, ValidationFailed
from learnloop.ids import ROW_ID_MAX
from learnloop.store.db import Database


@dataclass(frozen=True)
class Params:
    """What a request said to a view: its query parameters and, for a detail page, the key in its path."""

    query: Mapping[str, str] = field(default_factory=dict)
    key: str | None = None
    # What the server answering runs (not in the database): ``serving`` (its OpenAI routes answer),
    # ``serving_model`` (the base model they load), ``serving_off`` (why they answer 503).
    server: Mapping[str, Any] = field(default_factory=dict)

    def integer(self, name: str, default: int, *, lo: int = 0, hi: int = ROW_ID_MAX) -> int:
        """Query parameter ``name`` as an int in [lo, hi]; a bad one is refused naming it."""
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        return _bounded(name, raw, lo, hi)

    def row_id(self, name: str) -> int:
        """The path's key as a row id (jobs, datasets): a whole number a database column can hold."""
        return _bounded(name, self.key or "", 0, ROW_ID_MAX)


_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")  # ASCII digits: str.isdigit() also takes "²"


def _bounded(name: str, raw: str, lo: int, hi: int) -> int:
    text = raw.strip()
    if not _INTEGER.fullmatch(text) or not lo <= int(text) <= hi:
        raise ValidationFailed(
            f"{name}: {raw[:40]!r} is not a whole number from {lo} to {hi}.", [(name, "out of range")]
        )
    return int(text)


View = Callable[[Database, Settings, Params], dict[str, Any]]


@dataclass(frozen=True)
class Page:
    name: str  # the template is <name>.html; a live page's body is _<name>.html
    path: str  # the URL; a detail page's has "{key}" ("{key:path}" when the key may hold "/")
    view: View
    title: str | None  # its entry in the navigation (None: reached by links only)
    section: str  # the navigation entry shown as current on this page
    live: bool  # its body refreshes from /ui/live/...

    @property
    def detail(self) -> bool:
        return "{key" in self.path


PAGES: dict[str, Page] = {}


def page(
    name: str, path: str, *, title: str | None = None, section: str | None = None, live: bool = False
) -> Callable[[View], View]:
    """Register ``view`` as the page ``name`` at ``path`` (in the navigation when ``title`` is given)."""

    def register(view: View) -> View:
        if name in PAGES:
            raise ValueError(f"dashboard page {name!r} is registered twice")
        PAGES[name] = Page(name, path, view, title, section or name, live)
        return view

    return register


def navigation() -> list[dict[str, str]]:
    """The navigation bar, in registration order."""
    return [{"name": p.name, "title": p.title, "href": p.path} for p in PAGES.values() if p.title]


def live_page(name: str) -> tuple[Page, str | None]:
    """The page whose body ``/ui/live/<name>`` serves, and its key (``job-12``: the job page, "12")."""
    found = PAGES.get(name)
    if found is not None and found.live and not found.detail:
        return found, None
    base, _, key = name.partition("-")
    found = PAGES.get(base)
    if found is not None and found.live and found.detail and key:
        return found, key
    raise NotFound(f"No live view {name!r}.")
