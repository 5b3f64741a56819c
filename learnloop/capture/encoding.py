"""The wire format's JSON encoder and decoder: compact UTF-8, orjson when installed.

Kept free of SQLAlchemy and pydantic so the app thread can serialize a record the moment it is
recorded (``BackgroundWriter.submit``) without importing the store.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

try:  # a declared dependency; the fallback keeps a broken install working, only slower
    import orjson
except ImportError:  # pragma: no cover
    orjson = None  # type: ignore[assignment]


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _json_dumps_stdlib(data: Any) -> bytes:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return without_lone_surrogates(text).encode()


def without_lone_surrogates(text: str) -> str:
    """``text`` with each lone UTF-16 surrogate (half of a character, e.g. an emoji cut in two)
    replaced by U+FFFD. Such a string cannot be written as UTF-8, so neither spooled nor stored:
    a record the app made keeps its other text rather than being lost whole."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


if orjson is not None:
    # Keys that are not strings (ints, say) are written as strings. orjson takes them only with
    # this option, which makes every call a third slower (measured), so it is the second try.
    _NON_STR_KEYS = orjson.OPT_NON_STR_KEYS

    def dumps(data: Any) -> bytes:
        """Compact UTF-8 JSON. Objects JSON has no type for become strings (datetimes ISO 8601,
        pydantic models their JSON dump, sets lists, anything else ``str()``), so do keys that
        are not strings; NaN and infinities become null, as JSON has no spelling for them; a
        lone surrogate becomes U+FFFD."""
        try:
            return orjson.dumps(data, default=_json_default)
        except TypeError:
            pass
        try:
            return orjson.dumps(data, default=_json_default, option=_NON_STR_KEYS)
        except TypeError:  # integers beyond 64 bits, a default() result orjson cannot take: the slow way
            return _json_dumps_stdlib(data)

    def dumps_str(data: Any) -> str:
        return dumps(data).decode()

    def dumps_each(values: list[Any]) -> list[str]:
        """``dumps_str`` of each value, in one pass (the store encodes a column at a time)."""
        encode = orjson.dumps
        try:
            return [encode(v, default=_json_default).decode() for v in values]
        except TypeError:
            return [dumps_str(v) for v in values]

    def loads(body: bytes | str) -> Any:
        return orjson.loads(body)

else:  # pragma: no cover
    dumps = _json_dumps_stdlib

    def dumps_str(data: Any) -> str:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=_json_default)

    def dumps_each(values: list[Any]) -> list[str]:
        return [dumps_str(v) for v in values]

    loads = json.loads
