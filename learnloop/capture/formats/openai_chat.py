"""OpenAI chat-completions JSONL: one conversation or one logged call per line.

A line is either
* ``{"messages": [...], "tools"?: [...], "model"?: ...}``: a finished conversation (OpenAI's
  fine-tuning and evals format), stored as it is; or
* ``{"request": {create() arguments}, "response": {a chat.completion}}``: one logged call, stored
  as ``wrap_openai`` records it (request messages and the answer; usage, finish reason, response
  id and sampling parameters in the metadata).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from learnloop.capture.calls import KEPT_PARAMS, LlmCall, openai_tool, trajectory_record
from learnloop.capture.formats import file_problems, json_documents
from learnloop.errors import error_location
from learnloop.store.records import TRAJECTORY


def read_openai_chat(path: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    problems: list[tuple[str, str]] = []
    docs = json_documents(path)
    if len(docs) == 1 and docs[0][0] == "file" and isinstance(docs[0][1], list):
        docs = [(f"item {i}", d) for i, d in enumerate(docs[0][1])]  # a JSON array of lines
    for n, (where, doc) in enumerate(docs, start=1):
        if not isinstance(doc, dict):
            problems.append((where, f"expected a JSON object, got {type(doc).__name__}"))
            continue
        try:
            record = _record(doc, n)
        except ValueError as exc:
            problems.append((where, str(exc)))
            continue
        try:
            records.append(TRAJECTORY.validate_python(record))
        except ValidationError as exc:
            problems.extend((f"{where}: {error_location(e) or '(record)'}", e["msg"]) for e in exc.errors())
    if problems:
        raise file_problems(path, problems, "OpenAI chat JSONL")
    return records


def _id(doc: dict[str, Any], n: int) -> str:
    canonical = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return "openai-" + hashlib.sha256(f"{n}\n{canonical}".encode()).hexdigest()[:32]


def _record(doc: dict[str, Any], n: int) -> dict[str, Any]:
    if isinstance(doc.get("request"), dict):
        return _call_record(doc, n)
    if "messages" not in doc:
        raise ValueError(
            "a line needs 'messages' (a conversation) or 'request' and 'response' (one logged call)"
        )
    record: dict[str, Any] = {"id": _id(doc, n), "messages": doc["messages"]}
    tools = doc.get("tools")
    if isinstance(tools, list) and tools:
        record["tools"] = [openai_tool(t) or t for t in tools]
    if doc.get("model"):
        record["model"] = doc["model"]
    if isinstance(doc.get("metadata"), dict):
        record["metadata"] = doc["metadata"]
    return record


def _time(seconds: Any) -> dt.datetime | None:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return None
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _call_record(doc: dict[str, Any], n: int) -> dict[str, Any]:
    request = doc["request"]
    response = doc.get("response")
    if not isinstance(request.get("messages"), list):
        raise ValueError("request.messages must be the list of messages sent")
    if response is not None and not isinstance(response, dict):
        raise ValueError("response must be the chat.completion object returned (or null for a failed call)")
    response = response or {}
    choices = response.get("choices") or []
    first = choices[0] if choices and isinstance(choices[0], dict) else {}
    answer = first.get("message")
    meta: dict[str, Any] = {}
    if first.get("finish_reason"):
        meta["finish_reason"] = first["finish_reason"]
    if len(choices) > 1:
        meta["choices"] = len(choices)
    if isinstance(response.get("usage"), dict):
        meta["usage"] = response["usage"]
    if response.get("id"):
        meta["response_id"] = response["id"]
    params = {k: request[k] for k in KEPT_PARAMS if request.get(k) is not None}
    if params:
        meta["params"] = params
    tools = [t for t in (openai_tool(x) for x in request.get("tools") or ()) if t is not None] or None
    error = doc.get("error")
    created = response.get("created")
    call = LlmCall(
        request=request["messages"],
        answer=answer if isinstance(answer, dict) else None,
        model=response.get("model") or request.get("model"),
        tools=tools,
        meta=meta,
        error={"type": "Error", "message": str(error)[:4000]} if error else None,
        started=_time(created),
    )
    return trajectory_record([call], id=_id(doc, n))
