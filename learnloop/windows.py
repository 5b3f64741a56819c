"""Time windows: trajectories of one period share a window id, as the original RL recorder grouped them.

A window length is ``Nm``, ``Nh`` or ``Nd`` (``capture.window``, ``1h`` by default). Windows are
aligned to the UTC epoch, and the id is the window's start written only as precisely as the length
needs: ``2026-12-02`` (days), ``2026-12-02T14`` (hours), ``2026-12-02T14:30`` (minutes). Ids sort
in time order as text.
"""

from __future__ import annotations

import datetime as dt
import re

_SPEC = re.compile(r"^\s*(\d+)\s*([mhd])\s*$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def window_seconds(spec: str) -> int:
    """Seconds in a window length such as ``1h``; ValueError naming the accepted forms otherwise."""
    m = _SPEC.match(spec or "")
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"window length {spec!r} must look like 30m, 1h, 6h or 1d")
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def _format(seconds: int) -> str:
    if seconds % 86400 == 0:
        return "%Y-%m-%d"
    if seconds % 3600 == 0:
        return "%Y-%m-%dT%H"
    return "%Y-%m-%dT%H:%M"


def window_id(when: dt.datetime, seconds: int) -> str:
    """The id of the window of ``seconds`` length that ``when`` falls in (naive times are UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    start = int((when - _EPOCH).total_seconds()) // seconds * seconds
    return (_EPOCH + dt.timedelta(seconds=start)).strftime(_format(seconds))


class WindowClock:
    """``window_id`` with the last answer cached: the capture hot path asks once per trajectory,
    and almost always for the same window as the time before."""

    __slots__ = ("seconds", "_last")

    def __init__(self, spec: str) -> None:
        self.seconds = window_seconds(spec)
        self._last: tuple[int, str] = (-1, "")  # one tuple, swapped whole: safe across threads

    def __call__(self, when: dt.datetime) -> str:
        bucket = int(when.timestamp()) // self.seconds
        last = self._last
        if bucket == last[0]:
            return last[1]
        wid = window_id(when, self.seconds)
        self._last = (bucket, wid)
        return wid


def fill_windows(records: list[dict] | None, spec: str, now: dt.datetime | None = None) -> None:
    """Give each trajectory record without a ``window`` the id of the window its ``created_at`` (else ``now``)
    falls in, as the capture SDK does: records that arrive over HTTP or in JSONL files are grouped alike."""
    if not records:
        return
    clock = WindowClock(spec)
    now = now or dt.datetime.now(dt.UTC)
    for rec in records:
        if rec.get("window"):
            continue
        when = rec.get("created_at") or now
        if isinstance(when, str):
            try:
                when = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
            except ValueError:
                when = now
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        rec["window"] = clock(when)
