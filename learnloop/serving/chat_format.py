"""Chat requests to prompts and model text to answers: roles, content parts, tools and tool calls.

Tool calls follow the convention most open chat models (SmolLM2, Qwen, Hermes) are trained on: a
call is ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` in the answer text.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from learnloop.errors import ValidationFailed

ROLES = ("system", "developer", "user", "assistant", "tool")
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text", "output_text"):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValidationFailed(
                    f"{where}.content[{j}] is a {kind!r} part; only text parts are supported by this model.",
                    [(f"{where}.content[{j}]", "only text parts")],
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise ValidationFailed(
        f"{where}.content must be a string or a list of text parts.", [(f"{where}.content", "str or parts")]
    )


def validate_tools(tools: Any) -> list[dict[str, Any]] | None:
    """The OpenAI ``tools`` array, checked: each item {"type": "function", "function": {"name", ...}}."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise ValidationFailed(
            "tools must be an array of {type: 'function', function: {...}} objects.", [("tools", "array")]
        )
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise ValidationFailed(
                f"tools[{i}] must be {{'type': 'function', "
                "'function': {'name': ..., 'parameters': {...}}}.",
                [(f"tools[{i}]", "function tool")],
            )
        if not isinstance(fn.get("name"), str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", fn["name"]):
            raise ValidationFailed(
                f"tools[{i}].function.name must be 1-64 letters, digits, '_', '.' or '-'.",
                [(f"tools[{i}].function.name", "name")],
            )
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise ValidationFailed(
                f"tools[{i}].function.parameters must be a JSON schema object.",
                [(f"tools[{i}].function.parameters", "object")],
            )
    return tools


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    """Plain {"role", "content", ...} dicts a chat template can render; every problem names its message."""
    if not isinstance(messages, list) or not messages:
        raise ValidationFailed("messages must be a non-empty array.", [("messages", "non-empty array")])
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ValidationFailed(f"{where} must be an object with a role and content.", [(where, "object")])
        role = m.get("role")
        if role not in ROLES:
            raise ValidationFailed(
                f"{where}.role is {role!r}; expected one of {', '.join(ROLES)}.", [(f"{where}.role", "role")]
            )
        msg: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": _text(m.get("content"), where),
        }
        calls = m.get("tool_calls")
        if calls:
            if role != "assistant" or not isinstance(calls, list):
                raise ValidationFailed(
                    f"{where}.tool_calls is only allowed on assistant messages, as an array.",
                    [(f"{where}.tool_calls", "assistant array")],
                )
            msg["tool_calls"] = [
                _call_for_template(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)
            ]
        elif role != "tool" and not msg["content"] and role != "assistant":
            raise ValidationFailed(f"{where}.content is empty.", [(f"{where}.content", "empty")])
        if role == "tool":
            if m.get("tool_call_id") is not None:
                msg["tool_call_id"] = str(m["tool_call_id"])
            if m.get("name"):
                msg["name"] = m["name"]
        out.append(msg)
    return out


def _call_for_template(call: Any, where: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ValidationFailed(
            f"{where} must be {{'type': 'function', 'function': {{'name', 'arguments'}}}}.",
            [(where, "tool call")],
        )
    args = fn.get("arguments") or "{}"
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise ValidationFailed(
                f"{where}.function.arguments is not valid JSON.", [(f"{where}.function.arguments", "JSON")]
            ) from None
    # chat templates expect arguments as a mapping
    return {"id": call.get("id"), "type": "function", "function": {"name": fn["name"], "arguments": args}}


def render_for_template(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, template: str
) -> list[dict[str, Any]]:
    """Fold tool calls and tool definitions into text when the template itself does not render them."""
    msgs = []
    for m in messages:
        if m.get("tool_calls") and "tool_calls" not in template:
            calls = "".join(f"<tool_call>{json.dumps(c['function'])}</tool_call>" for c in m["tool_calls"])
            m = {"role": m["role"], "content": (m["content"] + "\n" if m["content"] else "") + calls}
        msgs.append(m)
    if tools and "tools" not in template:
        listing = "\n".join(json.dumps(t["function"]) for t in tools)
        note = (
            "You can call these tools. To call one, answer with "
            '<tool_call>{"name": <name>, "arguments": {...}}</tool_call>.\n' + listing
        )
        if msgs and msgs[0]["role"] == "system":
            msgs[0] = {**msgs[0], "content": msgs[0]["content"] + "\n\n" + note}
        else:
            msgs.insert(0, {"role": "system", "content": note})
    return msgs


def parse_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]] | None]:
    """(content left, OpenAI tool_calls) from model text;
    calls that are not valid JSON stay in the content."""
    calls = []
    for block in _TOOL_CALL.findall(text):
        try:
            data = json.loads(block)
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            continue
        args = data.get("arguments", data.get("parameters", {}))
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": data["name"],
                    "arguments": args if isinstance(args, str) else json.dumps(args),
                },
            }
        )
    if not calls:
        return text, None
    rest = _TOOL_CALL.sub("", text).strip()
    return rest or None, calls
