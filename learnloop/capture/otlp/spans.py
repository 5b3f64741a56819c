"""One span to one LLM call: which spans are calls, and their messages in each style
instrumentations write."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from learnloop.capture.calls import (
    KEPT_PARAMS,
    LlmCall,
    maybe_json,
    openai_tool,
    openai_tool_call,
    usage,
)
from learnloop.capture.otlp.decode import Span

# Operations that are one model call; others (embeddings, execute_tool, invoke_agent) are not.
LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "completion"})
_MESSAGE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
_DETAILS_EVENT = "gen_ai.client.inference.operation.details"
_SEMCONV_PARAMS = {
    "gen_ai.request.temperature": "temperature",
    "gen_ai.request.top_p": "top_p",
    "gen_ai.request.max_tokens": "max_tokens",
    "gen_ai.request.seed": "seed",
    "gen_ai.request.presence_penalty": "presence_penalty",
    "gen_ai.request.frequency_penalty": "frequency_penalty",
    "gen_ai.request.stop_sequences": "stop",
    "gen_ai.request.choice.count": "n",
}
STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR

NO_CONTENT = (
    "an LLM call span without message content; turn on the instrumentation's content capture "
    "(OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true for the OpenTelemetry instrumentations, "
    "TRACELOOP_TRACE_CONTENT=true for OpenLLMetry; OpenInference records it unless "
    "OPENINFERENCE_HIDE_INPUTS/OUTPUTS is set)"
)


# -- one span -------------------------------------------------------------------------------


def is_llm_call(span: Span) -> bool:
    """Whether ``span`` is one call to a model (see the module doc)."""
    attrs = span.attributes
    op = attrs.get("gen_ai.operation.name")
    if op is not None:
        return op in LLM_OPERATIONS
    kind = attrs.get("openinference.span.kind")
    if kind is not None:
        return str(kind).upper() == "LLM"
    if attrs.get("llm.request.type") in ("chat", "completion"):
        return True
    if any(k.startswith(("gen_ai.prompt.", "gen_ai.completion.")) for k in attrs):
        return True
    return any(name in _MESSAGE_EVENTS or name == "gen_ai.choice" for name, _ in span.events)


def llm_call(span: Span) -> LlmCall:
    """The call an LLM span records, in whichever message style it was written."""
    attrs = span.attributes
    details = next((a for name, a in span.events if name == _DETAILS_EVENT), None)
    if _has_semconv_messages(attrs):
        request, answer, finish = _semconv_messages(attrs)
    elif details is not None and _has_semconv_messages(details):
        request, answer, finish = _semconv_messages(details)
    elif any(k.startswith(("gen_ai.prompt.", "gen_ai.completion.")) for k in attrs):
        request, answer, finish = _legacy_messages(attrs)
    elif any(k.startswith(("llm.input_messages.", "llm.output_messages.")) for k in attrs):
        request, answer, finish = _openinference_messages(attrs)
    else:
        request, answer, finish = _event_messages(span.events)
    if answer is not None and answer.get("content") in (None, "") and not answer.get("tool_calls"):
        answer = None  # nothing the model said (as the SDK keeps an empty answer)
    meta: dict[str, Any] = {}
    if span.end_ns >= span.start_ns > 0:
        meta["latency_ms"] = round((span.end_ns - span.start_ns) / 1e6, 3)
    finish = finish or _first(attrs.get("gen_ai.response.finish_reasons")) or attrs.get("llm.finish_reason")
    if finish:
        meta["finish_reason"] = str(finish)
    used = usage(
        _pick(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"),
        _pick(
            attrs,
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.completion_tokens",
            "llm.token_count.completion",
        ),
        _pick(attrs, "gen_ai.usage.total_tokens", "llm.usage.total_tokens", "llm.token_count.total"),
    )
    if used:
        meta["usage"] = used
    if attrs.get("gen_ai.response.id"):
        meta["response_id"] = str(attrs["gen_ai.response.id"])
    params = _params(attrs)
    if params:
        meta["params"] = params
    if attrs.get("gen_ai.is_streaming") is True or attrs.get("llm.is_streaming") is True:
        meta["stream"] = True
    model = _pick(
        attrs, "gen_ai.response.model", "gen_ai.request.model", "llm.model_name", "llm.response.model"
    )
    return LlmCall(
        request=request,
        answer=answer,
        model=str(model) if model else None,
        tools=_tools(attrs, details),
        meta=meta,
        error=_error(span),
        started=_time(span.start_ns),
    )


def _pick(attrs: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = attrs.get(key)
        if value not in (None, ""):
            return value
    return None


def _first(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _time(ns: int) -> dt.datetime | None:
    if ns <= 0:
        return None
    try:
        return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _params(attrs: dict[str, Any]) -> dict[str, Any]:
    params = {name: attrs[key] for key, name in _SEMCONV_PARAMS.items() if attrs.get(key) is not None}
    invocation = maybe_json(attrs.get("llm.invocation_parameters"))  # OpenInference: the request's kwargs
    if isinstance(invocation, dict):
        params.update({k: v for k, v in invocation.items() if k in KEPT_PARAMS and v is not None})
    return params


def _error(span: Span) -> dict[str, Any] | None:
    if span.status_code != STATUS_ERROR:
        return None
    exception = next((a for name, a in span.events if name == "exception"), {})
    kind = exception.get("exception.type") or span.attributes.get("error.type") or "Error"
    message = span.status_message or exception.get("exception.message") or ""
    return {"type": str(kind), "message": str(message)[:4000]}


def _tools(attrs: dict[str, Any], details: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    raw = maybe_json(attrs.get("gen_ai.tool.definitions"))
    if raw is None and details is not None:
        raw = maybe_json(details.get("gen_ai.tool.definitions"))
    if raw is None:
        functions = unflatten(attrs, "llm.request.functions.")  # OpenLLMetry's attribute style
        raw = functions or None
    if raw is None:
        oi = unflatten(attrs, "llm.tools.")  # OpenInference: llm.tools.N.tool.json_schema
        raw = [t.get("tool", {}).get("json_schema") for t in oi if isinstance(t, dict)] or None
    if not isinstance(raw, list):
        return None
    tools = [t for t in (openai_tool(x) for x in raw) if t is not None]
    return tools or None


# -- message styles -------------------------------------------------------------------------

Messages = tuple[list[dict[str, Any]], dict[str, Any] | None, Any]


def _has_semconv_messages(attrs: dict[str, Any]) -> bool:
    return "gen_ai.input.messages" in attrs or "gen_ai.output.messages" in attrs


def _semconv_messages(attrs: dict[str, Any]) -> Messages:
    """The current GenAI conventions: JSON lists of ``{role, parts: [...]}``."""
    request: list[dict[str, Any]] = []
    system = maybe_json(attrs.get("gen_ai.system_instructions"))
    if isinstance(system, list):
        text = _parts_content(system)
        if text is not None:
            request.append({"role": "system", "content": text})
    elif isinstance(system, str) and system:
        request.append({"role": "system", "content": system})
    for m in _json_list(attrs.get("gen_ai.input.messages")):
        request.extend(_parts_message(m))
    outputs = _json_list(attrs.get("gen_ai.output.messages"))
    answer, finish = None, None
    if outputs:
        converted = _parts_message(outputs[0])
        answer = converted[0] if converted else None
        finish = outputs[0].get("finish_reason")
    return request, answer, finish


def _json_list(value: Any) -> list[dict[str, Any]]:
    value = maybe_json(value)
    return [m for m in value if isinstance(m, dict)] if isinstance(value, list) else []


def _parts_content(parts: list[Any]) -> Any:
    content = []
    for p in parts:
        if not isinstance(p, dict):
            continue
        kind = p.get("type")
        if kind == "text":
            content.append({"type": "text", "text": str(p.get("content") or "")})
        elif kind == "uri" and p.get("modality") == "image" and p.get("uri"):
            content.append({"type": "image_url", "image_url": {"url": p["uri"]}})
    if len(content) == 1 and content[0]["type"] == "text":
        return content[0]["text"]
    return content or None


def _parts_message(m: dict[str, Any]) -> list[dict[str, Any]]:
    """One GenAI-conventions message as OpenAI messages (a tool response part becomes a tool message)."""
    role = m.get("role") or "user"
    parts = m.get("parts")
    if not isinstance(parts, list):  # some writers send OpenAI's shape in the same attribute
        return [_openai_message(m)] if "content" in m or "tool_calls" in m else []
    calls = [
        openai_tool_call(p.get("id"), p.get("name"), p.get("arguments"))
        for p in parts
        if isinstance(p, dict) and p.get("type") == "tool_call"
    ]
    out: list[dict[str, Any]] = []
    content = _parts_content(parts)
    if content is not None or calls:
        msg: dict[str, Any] = {"role": role, "content": content}
        if calls:
            msg["tool_calls"] = calls
        if m.get("name"):
            msg["name"] = str(m["name"])
        out.append(msg)
    for p in parts:
        if isinstance(p, dict) and p.get("type") == "tool_call_response":
            answer = {
                "role": "tool",
                "tool_call_id": str(p.get("id") or ""),
                "content": _text(p.get("response")),
            }
            out.append(answer)
    return out


def _openai_message(m: dict[str, Any]) -> dict[str, Any]:
    msg = {k: v for k, v in m.items() if k in ("role", "content", "name", "tool_call_id") and v is not None}
    msg.setdefault("role", "user")
    msg["content"] = _content(m.get("content"))
    calls = maybe_json(m.get("tool_calls"))
    if isinstance(calls, list) and calls:
        msg["tool_calls"] = [_tool_call(c) for c in calls if isinstance(c, dict)]
    return msg


def _tool_call(c: dict[str, Any]) -> dict[str, Any]:
    fn = c.get("function") if isinstance(c.get("function"), dict) else c
    return openai_tool_call(c.get("id"), fn.get("name"), fn.get("arguments"))


def _content(value: Any) -> Any:
    value = maybe_json(value) if isinstance(value, str) and value.startswith("[{") else value
    if isinstance(value, list) and all(isinstance(p, dict) and "type" in p for p in value):
        return value
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _legacy_messages(attrs: dict[str, Any]) -> Messages:
    """OpenLLMetry's attribute style: ``gen_ai.prompt.N.role/content/tool_calls.M.*``."""
    request = []
    for m in unflatten(attrs, "gen_ai.prompt."):
        if isinstance(m, dict):
            msg = _openai_message(m)
            if msg["role"] != "tool":
                msg.pop("tool_call_id", None)
            request.append(msg)
    completions = [c for c in unflatten(attrs, "gen_ai.completion.") if isinstance(c, dict)]
    answer, finish = None, None
    if completions:
        answer = _openai_message({"role": "assistant", **completions[0]})
        finish = completions[0].get("finish_reason")
    return request, answer, finish


def _openinference_messages(attrs: dict[str, Any]) -> Messages:
    """OpenInference: ``llm.input_messages.N.message.role/content/contents/tool_calls.M.tool_call.*``."""

    def message(m: Any) -> dict[str, Any] | None:
        m = m.get("message") if isinstance(m, dict) else None
        if not isinstance(m, dict):
            return None
        msg: dict[str, Any] = {"role": m.get("role") or "user"}
        contents = [c.get("message_content") for c in m.get("contents") or () if isinstance(c, dict)]
        if m.get("content") is not None:
            msg["content"] = _content(m["content"])
        elif contents:
            parts = []
            for c in contents:
                if not isinstance(c, dict):
                    continue
                if c.get("type") == "text":
                    parts.append({"type": "text", "text": str(c.get("text") or "")})
                elif c.get("type") == "image":
                    url = ((c.get("image") or {}).get("image") or {}).get("url")
                    if url:
                        parts.append({"type": "image_url", "image_url": {"url": url}})
            msg["content"] = parts
        else:
            msg["content"] = None
        calls = [
            _tool_call(tc)
            for tc in (c.get("tool_call") for c in m.get("tool_calls") or () if isinstance(c, dict))
            if isinstance(tc, dict)
        ]
        if calls:
            msg["tool_calls"] = calls
        for key in ("tool_call_id", "name"):
            if m.get(key):
                msg[key] = str(m[key])
        return msg

    request = [m for m in (message(x) for x in unflatten(attrs, "llm.input_messages.")) if m is not None]
    outputs = [m for m in (message(x) for x in unflatten(attrs, "llm.output_messages.")) if m is not None]
    return request, outputs[0] if outputs else None, None


def _event_messages(events: list[tuple[str, dict[str, Any]]]) -> Messages:
    """The GenAI conventions' older per-message events (``gen_ai.user.message``, ``gen_ai.choice``)."""
    request: list[dict[str, Any]] = []
    answer, finish = None, None
    for name, attrs in events:
        role = _MESSAGE_EVENTS.get(name)
        if role is not None:
            msg = _openai_message({**attrs, "role": attrs.get("role") or role})
            if role == "tool" and not msg.get("tool_call_id") and attrs.get("id"):
                msg["tool_call_id"] = str(attrs["id"])
            request.append(msg)
        elif name == "gen_ai.choice" and answer is None and attrs.get("index", 0) in (0, None):
            message = maybe_json(attrs.get("message"))
            if isinstance(message, dict):
                answer = _openai_message({"role": "assistant", **message})
            finish = attrs.get("finish_reason")
    return request, answer, finish


def unflatten(attrs: dict[str, Any], prefix: str) -> list[Any]:
    """Indexed attributes (``prefix0.role``, ``prefix0.tool_calls.1.name``) as a list of nested dicts;
    numbered levels become lists in index order."""
    root: dict[str, Any] = {}
    for key, value in attrs.items():
        if not key.startswith(prefix):
            continue
        *path, leaf = key[len(prefix) :].split(".")
        node = root
        for part in path:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        if not isinstance(node.get(leaf), dict):
            node[leaf] = value
    listed = _listify(root)
    return listed if isinstance(listed, list) else []


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(k.isdigit() for k in node):
        return [_listify(node[k]) for k in sorted(node, key=int)]
    return {k: _listify(v) for k, v in node.items()}
