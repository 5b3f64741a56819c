"""``learnloop.example.toml``, generated from the settings model so it cannot drift from it.

``learnloop config --example > learnloop.example.toml`` rewrites the file; a test fails when the file
in the repository differs from what this produces. Every setting appears with its default and its
description as a one-line comment; settings without a fixed default (unset, or depending on the
machine, like the data dir under your home) appear commented out.
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from learnloop.config import Settings

HEADER = """\
# learnloop.example.toml: every setting with its default. Copy what you change into learnloop.toml
# (in the working directory, or the file LEARNLOOP_CONFIG names). Environment variables win over the
# file: LEARNLOOP_<SECTION>__<KEY>, e.g. LEARNLOOP_CAPTURE__SAMPLE_RATE=0.5.
# Generated from learnloop/config/: `learnloop config --example > learnloop.example.toml`.
"""


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def toml_value(value: Any) -> str:
    """A TOML literal for a plain default (strings, numbers, booleans, lists, tables inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, (list, tuple, set)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_toml_key(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    if hasattr(value, "value"):  # enums
        return toml_value(value.value)
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as TOML")


def _model_class(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is list:
        args = typing.get_args(annotation)
        return _model_class(args[0]) if args else None
    return None


def _comment(info: FieldInfo) -> str:
    text = " ".join((info.description or "").split())
    return f"# {text}" if text else "#"


def _default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


def _machine_specific(value: Any) -> bool:
    home = str(Path.home())
    return isinstance(value, Path) and str(value).startswith(home) and home not in ("/", "")


def _leaf_lines(key: str, info: FieldInfo, *, commented: bool = False) -> list[str]:
    out = [_comment(info)]
    if info.is_required():
        return out + [f"# {key} =   (required)"]
    value = _default(info)
    if value is None or isinstance(value, SecretStr):
        out.append(f"# {key} =   (unset by default)")
    elif _machine_specific(value):
        shown = "~" + str(value)[len(str(Path.home())) :]
        out.append(f"# {key} = {toml_value(shown)}")
    else:
        out.append(f"{'# ' if commented else ''}{key} = {toml_value(value)}")
    return out


def _section(
    prefix: str, model: type[BaseModel], *, commented: bool = False, array: bool = False
) -> Iterator[str]:
    leaves: list[tuple[str, FieldInfo]] = []
    subsections: list[tuple[str, FieldInfo, type[BaseModel]]] = []
    arrays: list[tuple[str, FieldInfo, type[BaseModel]]] = []
    for name, info in model.model_fields.items():
        sub = _model_class(info.annotation)
        item = _list_item_model(info.annotation)
        if sub is not None:
            subsections.append((name, info, sub))
        elif item is not None:
            arrays.append((name, info, item))
        else:
            leaves.append((name, info))
    if prefix:
        yield ""
        doc = " ".join((model.__doc__ or "").split())
        if doc and model.__doc__ != BaseModel.__doc__:
            yield f"# {doc}"
        header = f"[[{prefix}]]" if array else f"[{prefix}]"
        yield f"# {header}" if commented else header
    for name, info in leaves:
        yield from _leaf_lines(name, info, commented=commented)
    for name, _info, sub in subsections:
        yield from _section(f"{prefix}.{name}" if prefix else name, sub, commented=commented)
    for name, info, item in arrays:
        # A list of tables (e.g. [[loops]]): empty by default, so shown as a commented-out example entry.
        yield ""
        yield f"# {' '.join((info.description or name).split())} (repeat the block for each; none by default)"
        yield from _section(f"{prefix}.{name}" if prefix else name, item, commented=True, array=True)


def example_toml(settings_cls: type[BaseModel] = Settings) -> str:
    """The full example configuration text for ``settings_cls``."""
    lines = HEADER.splitlines() + [""] + list(_section("", settings_cls))
    return "\n".join(lines).rstrip() + "\n"


def setting_paths(model: type[BaseModel] = Settings, prefix: str = "") -> list[str]:
    """Dotted path of every leaf setting (lists of tables contribute their items' fields)."""
    out = []
    for name, info in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        sub = _model_class(info.annotation) or _list_item_model(info.annotation)
        out.extend(setting_paths(sub, path) if sub is not None else [path])
    return out
