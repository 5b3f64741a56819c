"""How the dashboard and the terminal write numbers, sizes, durations and times for people.

The dashboard's templates use these as filters (``FILTERS``); ``learnloop status`` uses the same
functions, so a size or a duration reads the same in both.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any
from urllib.parse import quote

from jinja2 import pass_context
from jinja2.runtime import Context
from markupsafe import Markup, escape

from learnloop.store.models import utcnow


def human_bytes(n: float | None) -> str:
    """``1.5 GB``; bytes below a KB as a whole number; ``–`` for None."""
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def number(x: Any, digits: int = 3) -> str:
    """Small floats to ``digits`` significant digits, large numbers with thousands separators."""
    if x is None:
        return "–"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def duration(s: float | None) -> str:
    """``45s``, ``3m 07s``, ``2h 05m``, ``3d 4h``."""
    if s is None:
        return "–"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def when(iso: str | None) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM``, with how long ago for the last two days."""
    if not iso:
        return "–"
    t = dt.datetime.fromisoformat(iso)
    delta = (utcnow() - t).total_seconds()
    stamp = t.strftime("%Y-%m-%d %H:%M")
    if 0 <= delta < 86400 * 2:
        return f"{stamp} ({duration(delta)} ago)"
    return stamp


def path_segment(value: Any) -> str:
    """``value`` quoted for one segment of a URL path (a trajectory id may hold "/", "?" or "#")."""
    return quote(str(value), safe="")


@pass_context
def version_link(context: Context, version_id: str | None, bold: bool = False) -> Markup:
    """A version id as a link to its page; the base model (None or "base") as plain text, and so is a
    version the page's ``known_versions`` lacks (deleted: traffic and counters outlive it)."""
    if not version_id or version_id == "base":
        return Markup("base")
    text = Markup("<b>%s</b>") % version_id if bold else escape(version_id)
    known = context.get("known_versions")
    if known is not None and version_id not in known:
        return text
    return Markup('<a href="/versions/%s" class="version-link">%s</a>') % (path_segment(version_id), text)


def job_stage(job: dict[str, Any]) -> str:
    """Where a running job is, in words: its cycle stage (building the dataset, evaluating 3/8, ...) or
    its training step."""
    stage = job.get("stage")
    done, total = job.get("stage_done"), job.get("stage_total")
    if stage and stage != "training":
        label = job.get("stage_label") or stage
        return f"{label} {done}/{total}" if total else label
    if job.get("total_steps"):
        return f"training step {job.get('step') or 0}/{job['total_steps']}"
    return "training" if stage == "training" else "starting"


FILTERS = {
    "bytes": human_bytes,
    "num": number,
    "secs": duration,
    "when": when,
    "segment": path_segment,
    "vlink": version_link,
    "stage": job_stage,
    # For data attributes: JSON with whatever is not JSON (times) as text.
    "tojson_attr": lambda v: json.dumps(v, default=str),
}
