"""The wire format's JSON encoder and decoder (compact UTF-8), shared by capture and the store.

It imports neither SQLAlchemy nor pydantic, so the app thread can encode a record the moment it
is recorded without loading the store.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import orjson

# How deep objects and arrays may nest in a record (a trajectory, a message, feedback), counting
# the record itself. Real records nest a handful of levels; a limit keeps every parser, encoder
# and database on the way below its own (orjson encodes 254 levels, pydantic parses 200, Python's
# json fails near 1,000 and takes the process's recursion budget with it).
MAX_DEPTH = 64
# The most path components an error names before it elides the rest.
SHOWN_PATH = 8


class TooDeep(ValueError):
    """JSON nested deeper than a limit; ``path`` leads to the first object or array past it."""

    def __init__(self, path: list[str], limit: int, where: str = "") -> None:
        self.path = path
        self.limit = limit
        super().__init__(f"{where or short_path(path) or '(root)'}: {depth_problem(limit)}")


def depth_problem(limit: int = MAX_DEPTH, what: str = "one record") -> str:
    return (
        f"nested more than {limit} levels deep (objects and arrays inside {what}, the outermost "
        "counted); flatten it or store it as a JSON string"
    )


def short_path(path: list[str]) -> str:
    """A path as ``metadata.a.0.0`` (at most ``SHOWN_PATH`` components, then ``…``)."""
    shown = ".".join(path[:SHOWN_PATH])
    return shown + "…" if len(path) > SHOWN_PATH else shown


def too_deep(value: Any, limit: int = MAX_DEPTH) -> list[str] | None:
    """The path to the first object or array of ``value`` nested deeper than ``limit`` (``value``
    itself at depth 1), or None. Iterative: any depth is walked without recursion."""
    if not _deeper_than(value, limit):
        return None
    stack: list[tuple[Any, int, list[str]]] = [(value, 1, [])]
    while stack:
        node, depth, path = stack.pop()
        if depth > limit:
            return path
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            if isinstance(child, (dict, list, tuple)):
                stack.append((child, depth + 1, [*path, str(key)]))
    return None  # pragma: no cover - _deeper_than said there is one


_CONTAINERS = (dict, list, tuple)


def _deeper_than(value: Any, limit: int) -> bool:
    # The walk every record gets, a level at a time: depths only, no paths (built again only for a
    # refusal), one comprehension per level (measured: benchmarks/bench_validation.py).
    level = [value]
    for _ in range(limit):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, _CONTAINERS)
        ]
        if not level:
            return False
    return True


def _default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def dumps(data: Any, *, max_depth: int | None = None) -> bytes:
    """Compact UTF-8 JSON. Values JSON has no type for become strings (datetimes ISO 8601, pydantic
    models their JSON dump, sets lists, anything else ``str()``), so do keys that are not strings;
    NaN and infinities become null; a lone UTF-16 surrogate becomes U+FFFD. Data nested at any
    depth is encoded (rows stored before the depth limit); with ``max_depth``, data nested deeper
    raises ``TooDeep`` instead (checked only off the fast path: orjson itself stops at 254 levels)."""
    try:
        return orjson.dumps(data, default=_default)
    except TypeError:
        pass
    if max_depth is not None:
        path = too_deep(data, max_depth)
        if path is not None:
            raise TooDeep(path, max_depth)
    try:  # keys that are not strings: a separate try, the option makes every call a third slower
        return orjson.dumps(data, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # lone surrogates, integers beyond 64 bits, nesting beyond 254 levels
        pass
    try:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=_default)
    except RecursionError:
        text = _dumps_deep(data)
    return without_lone_surrogates(text).encode()


def _dumps_deep(data: Any) -> str:
    """JSON for data nested deeper than the recursive encoders go, with an explicit stack."""
    out: list[str] = []
    # Each entry: a scalar or container still to write, or a closing bracket / separator as text.
    todo: list[Any] = [data]
    while todo:
        item = todo.pop()
        if isinstance(item, _Raw):
            out.append(item)
        elif isinstance(item, dict):
            parts: list[Any] = [_Raw("}")]
            for i, (k, v) in enumerate(reversed(item.items())):
                parts += [v, _Raw(json.dumps(str(k), ensure_ascii=False) + ":")]
                if i < len(item) - 1:
                    parts.append(_Raw(","))
            todo += parts
            out.append("{")
        elif isinstance(item, (list, tuple)):
            parts = [_Raw("]")]
            for i, v in enumerate(reversed(item)):
                parts.append(v)
                if i < len(item) - 1:
                    parts.append(_Raw(","))
            todo += parts
            out.append("[")
        else:
            out.append(json.dumps(item, ensure_ascii=False, default=_default))
    return "".join(out)


class _Raw(str):
    """Text ``_dumps_deep`` writes as it is."""


def dumps_str(data: Any) -> str:
    return dumps(data).decode()


def dumps_column(data: Any) -> str:
    """JSON for a database column: the standard encoder's spelling, as SQLAlchemy writes it by
    default (a NaN loss in a job's progress stays NaN, which the alerts look for), with values
    JSON has no type for written as ``dumps`` writes them."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=_default)


def loads(body: bytes | str) -> Any:
    """Parse JSON; the standard parser takes what orjson refuses (the escape of a lone surrogate).

    JSON nested deeper than the parsers go (orjson: 1,024 levels) raises ``json.JSONDecodeError``
    saying so, never ``RecursionError``."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if exc.msg.startswith("depth limit"):
            raise _nested_too_deep(body, exc.pos) from None
    try:
        return json.loads(body)
    except RecursionError:
        raise _nested_too_deep(body, None) from None


class NestedTooDeep(json.JSONDecodeError):
    """JSON nested deeper than the parsers read; ``path`` leads to where it goes too deep."""

    def __init__(self, text: str, pos: int, path: list[str]) -> None:
        super().__init__(
            "nested more than 1,024 levels deep, past what the parsers read (a record may nest at "
            f"most {MAX_DEPTH} levels); flatten it or store it as a JSON string",
            text,
            pos,
        )
        self.path = path


def _nested_too_deep(body: bytes | str, pos: int | None) -> NestedTooDeep:
    text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else body
    if pos is None:
        pos = deepest_position(text)
    return NestedTooDeep(text, pos, path_at(text, pos))


_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},:]')


def path_at(text: str, pos: int) -> list[str]:
    """The keys and indexes leading to character ``pos`` of JSON ``text`` (read up to there only:
    for naming where a document too deep to parse goes too deep)."""
    path: list[Any] = []  # an array's index (int) or an object's current key (str, None before it)
    last = ""
    for m in _STRUCTURE.finditer(text, 0, pos):
        token = m.group()
        if token in "{[":
            path.append(None if token == "{" else 0)
        elif token in "}]":
            if path:
                path.pop()
        elif token == "," and path and isinstance(path[-1], int):
            path[-1] += 1
        elif token == ":" and path:
            path[-1] = last
        elif token.startswith('"'):
            try:
                last = json.loads(token)
            except ValueError:
                last = token[1:-1]
    return [str(p) for p in path if p is not None]


def deepest_position(text: str) -> int:
    """Where JSON ``text`` first reaches its deepest nesting (a position for ``path_at``)."""
    depth = best = at = 0
    for m in _STRUCTURE.finditer(text):
        token = m.group()
        if token in "{[":
            depth += 1
            if depth > best:
                best, at = depth, m.end()
        elif token in "}]":
            depth -= 1
    return at


def without_lone_surrogates(text: str) -> str:
    """``text`` with each lone UTF-16 surrogate (half of a character, e.g. an emoji cut in two)
    replaced by U+FFFD: such a string cannot be written as UTF-8, so neither spooled nor stored,
    and a record keeps its other text rather than being lost whole."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
