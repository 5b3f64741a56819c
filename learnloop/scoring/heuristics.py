"""Built-in heuristic rewards. Each is in [0, 1] with 1 = good, or None when it does not apply.

They are registered exactly like user functions, so they can be replaced or given weight 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from learnloop.errors import ConfigError
from learnloop.scoring.registry import reward
from learnloop.scoring.view import TrajectoryView

# --------------------------------------------------------------------------- JSON

_FENCE = re.compile(r"^```(?:json)?\s*\n(.*?)\n?```$", re.DOTALL)
_JSON_FORMATS = {"json", "json_object", "json_schema"}


def _expects_json(t: TrajectoryView) -> bool:
    fmt = t.metadata.get("response_format")
    if isinstance(fmt, Mapping):
        fmt = fmt.get("type")
    return (
        fmt in _JSON_FORMATS
        or t.metadata.get("json") is True
        or "json" in t.tags
        or _schema_ref(t) is not None
    )


def _parse_json(text: str) -> tuple[Any, bool] | None:
    """(value, fenced) if ``text`` is JSON, possibly inside one ``` fence; None if it is not."""
    text = text.strip()
    try:
        return json.loads(text), False
    except ValueError:
        pass
    m = _FENCE.match(text)
    if m:
        try:
            return json.loads(m.group(1)), True
        except ValueError:
            return None
    return None


def _looks_like_json(text: str) -> bool:
    # Bracketed at both ends, so prose such as "[1] see the manual." is not taken for JSON.
    stripped = text.strip()
    return (stripped[:1], stripped[-1:]) in (("{", "}"), ("[", "]")) or stripped.startswith("```json")


@reward("json_valid", version="1")
def json_valid(t: TrajectoryView) -> float | None:
    """1.0 if the final answer is JSON, 0.5 if it is JSON only inside a ``` fence, 0.0 if not.

    Applies when JSON is expected (metadata response_format json/json_object/json_schema,
    metadata json=true, tag 'json', or a named schema) or the answer starts like JSON.
    """
    text = t.completion
    if not text:
        return None
    if not (_expects_json(t) or _looks_like_json(text)):
        return None
    parsed = _parse_json(text)
    if parsed is None:
        return 0.0
    return 0.5 if parsed[1] else 1.0


_schemas: dict[str, dict[str, Any]] = {}
_validators: dict[str, Any] = {}


def register_schema(name: str, schema: Mapping[str, Any] | str | Path) -> None:
    """Name a JSON schema (a dict, or a path to a .json file) that trajectories can refer to."""
    if isinstance(schema, (str, Path)):
        path = Path(schema).expanduser()
        try:
            schema = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"JSON schema {name!r}: cannot read {str(path)!r}: {exc}") from None
    if not isinstance(schema, Mapping):
        raise ConfigError(f"JSON schema {name!r} must be a JSON object, got {type(schema).__name__}.")
    from jsonschema import validators
    from jsonschema.exceptions import SchemaError

    cls = validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise ConfigError(f"JSON schema {name!r} is not a valid schema: {exc.message}") from None
    _schemas[name] = dict(schema)
    _validators[f"name:{name}"] = cls(schema)


def _schema_ref(t: TrajectoryView) -> str | dict[str, Any] | None:
    inline = t.metadata.get("json_schema")
    if isinstance(inline, Mapping):
        return dict(inline)
    named = t.metadata.get("schema")
    if isinstance(named, str):
        return named
    for tag in t.tags:
        if isinstance(tag, str) and tag.startswith("schema:"):
            return tag[7:]
    return None


def _validator(ref: str | dict[str, Any], t: TrajectoryView) -> Any:
    if isinstance(ref, str):
        key = f"name:{ref}"
        if key not in _validators:
            configured = t.config.json_schemas.get(ref)
            if configured is None:
                raise ConfigError(
                    f"JSON schema {ref!r} is not registered: add it under [scoring.json_schemas] in "
                    "learnloop.toml or call learnloop.scoring.register_schema()."
                )
            register_schema(ref, configured)
        return _validators[key]
    key = "inline:" + json.dumps(ref, sort_keys=True)
    if key not in _validators:
        from jsonschema import validators

        cls = validators.validator_for(ref)
        cls.check_schema(ref)
        if len(_validators) > 10_000:  # inline schemas are usually few; do not grow without bound
            _validators.clear()
        _validators[key] = cls(ref)
    return _validators[key]


@reward("json_schema", version="1")
def json_schema(t: TrajectoryView) -> float | None:
    """1.0 if the final answer is JSON matching the schema the trajectory names, else 0.0.

    The schema comes from metadata 'json_schema' (inline), metadata 'schema' (a name) or a
    tag 'schema:NAME'; names resolve through register_schema() or [scoring.json_schemas].
    """
    ref = _schema_ref(t)
    if ref is None or t.final_message is None:
        return None
    validator = _validator(ref, t)
    parsed = _parse_json(t.completion)
    if parsed is None:
        return 0.0
    return 1.0 if validator.is_valid(parsed[0]) else 0.0


# --------------------------------------------------------------------------- length


@reward("length", version="1")
def length(t: TrajectoryView) -> float | None:
    """1.0 up to the target length of the final answer, falling linearly to 0.0 at twice it.

    The target is metadata 'target_chars' when present, else scoring.length_target_chars.
    """
    if not t.completion:
        return None
    target = t.metadata.get("target_chars") or t.config.length_target_chars
    n = len(t.completion)
    if n <= target:
        return 1.0
    return max(0.0, 1.0 - (n - target) / target)


# --------------------------------------------------------------------------- refusal

_REFUSAL = re.compile(
    r"\b(?:i(?:'m| am) (?:sorry|afraid),? (?:but )?i (?:can(?:no|')t|cannot|won't|am unable|'m unable)"
    r"|i (?:can(?:no|')t|cannot|won't|will not|am unable to|'m unable to|am not able to|'m not able to) "
    r"(?:help|assist|comply|provide|do that|fulfil+|complete|answer|share|support|create|generate|write)"
    r"|as an ai(?: language model)?,? i (?:can(?:no|')t|cannot|don't|do not|am unable)"
    r"|i must (?:decline|refuse)"
    r"|(?:this|that) request (?:goes against|violates))"
)
# Every refusal pattern contains one of these; checking them first (in C) skips the regex for
# almost every answer, which is what keeps the built-ins under 100 µs per trajectory.
_REFUSAL_HINTS = (
    "sorry",
    "afraid",
    "can't",
    "cannot",
    "won't",
    "will not",
    "unable",
    "not able",
    "as an ai",
    "must decline",
    "must refuse",
    "request",
)


@reward("no_refusal", version="1")
def no_refusal(t: TrajectoryView) -> float | None:
    """0.0 if the final answer is a refusal ("I'm sorry, but I can't help with that"), else 1.0.

    Only the opening of the answer is checked: a refusal comes first, while a long helpful
    answer may legitimately say "I can't" somewhere inside.
    """
    final = t.final_message
    if final is None:
        return None
    if final.get("refusal"):  # OpenAI's structured refusal field
        return 0.0
    text = t.completion
    if not text:
        return None
    text = text[:300].lower().replace("\u2019", "'")
    if not any(h in text for h in _REFUSAL_HINTS):
        return 1.0
    return 0.0 if _REFUSAL.search(text) else 1.0


# --------------------------------------------------------------------------- tools

_ERROR_START = re.compile(r"(?:error|exception|traceback|fatal|failed|failure)\b")
_ERROR_PHRASES = (
    "traceback (most recent call last)",
    "permission denied",
    "not found",
    "timed out",
    "no such file",
)
_HTTP_ERROR = re.compile(r"\b(?:status(?:_code)?|http)[ :=]*[45]\d\d\b")


def _text_looks_like_error(text: str) -> bool:
    low = text[:500].lower()
    if _ERROR_START.match(low) or any(p in low for p in _ERROR_PHRASES):
        return True
    # The status-code regex is the costly part; run it only where it can match.
    return ("status" in low or "http" in low) and _HTTP_ERROR.search(low) is not None


_FAILED_STATUS = {"error", "failed", "failure", "fail", "exception"}


def tool_result_ok(content: str) -> bool:
    """Whether a tool result looks like a success (structured error fields first, then text)."""
    stripped = content.strip()
    if not stripped:
        return True  # an empty result is a valid answer for many tools (e.g. "no rows")
    if stripped[0] == "{":
        try:
            data = json.loads(stripped)
        except ValueError:
            data = None
        if isinstance(data, dict):
            if data.get("error") or data.get("errors") or data.get("exception"):
                return False
            if data.get("ok") is False or data.get("success") is False or data.get("is_error") is True:
                return False
            status = data.get("status")
            if isinstance(status, str) and status.lower() in _FAILED_STATUS:
                return False
            for code in (status, data.get("status_code")):
                if isinstance(code, int) and not isinstance(code, bool) and code >= 400:
                    return False
            return True
    return not _text_looks_like_error(stripped)


@reward("tool_success", version="1")
def tool_success(t: TrajectoryView) -> float | None:
    """Share of tool results that look like successes (None when no tool was called)."""
    results = t.tool_results
    if not results:
        return None
    return sum(tool_result_ok(r.content) for r in results) / len(results)
