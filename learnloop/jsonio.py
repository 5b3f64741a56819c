"""The wire format's JSON encoder and decoder (compact UTF-8), shared by capture and the store.

It imports neither SQLAlchemy nor pydantic, so the app thread can encode a record the moment it
is recorded without loading the store.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import orjson


def _default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def dumps(data: Any) -> bytes:
    """Compact UTF-8 JSON. Values JSON has no type for become strings (datetimes ISO 8601, pydantic
    models their JSON dump, sets lists, anything else ``str()``), so do keys that are not strings;
    NaN and infinities become null; a lone UTF-16 surrogate becomes U+FFFD."""
    try:
        return orjson.dumps(data, default=_default)
    except TypeError:
        pass
    try:  # keys that are not strings: a separate try, the option makes every call a third slower
        return orjson.dumps(data, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # lone surrogates, integers beyond 64 bits
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=_default)
        return without_lone_surrogates(text).encode()


def dumps_str(data: Any) -> str:
    return dumps(data).decode()


def dumps_column(data: Any) -> str:
    """JSON for a database column: the standard encoder's spelling, as SQLAlchemy writes it by
    default (a NaN loss in a job's progress stays NaN, which the alerts look for), with values
    JSON has no type for written as ``dumps`` writes them."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=_default)


def loads(body: bytes | str) -> Any:
    """Parse JSON; the standard parser takes what orjson refuses (the escape of a lone surrogate)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def without_lone_surrogates(text: str) -> str:
    """``text`` with each lone UTF-16 surrogate (half of a character, e.g. an emoji cut in two)
    replaced by U+FFFD: such a string cannot be written as UTF-8, so neither spooled nor stored,
    and a record keeps its other text rather than being lost whole."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
