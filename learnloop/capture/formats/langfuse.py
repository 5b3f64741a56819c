"""Langfuse exports: traces with their observations (``GET /api/public/traces/{id}``, or a page of
them under ``data``), or observations alone (``GET /api/public/observations``, an observations
export), as one JSON document or one object per line.

Each trace's generations (observations of type ``GENERATION``) become one trajectory, one
``llm_calls`` entry per generation when there are several, as the OTLP mapping does with a trace's
LLM spans; the trajectory id is ``langfuse-<trace id>``. The trace's tags become tags, its numeric
scores the trajectory's scores, and ``learnloop.*`` keys in its metadata (flat, or under a
``learnloop`` object) set scenario, agent, group, source and metadata as the OTLP attributes do.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from learnloop.capture.calls import KEPT_PARAMS, LlmCall, maybe_json, openai_tool, trajectory_record, usage
from learnloop.capture.formats import file_problems, json_documents
from learnloop.capture.otlp import run_fields
from learnloop.errors import error_location
from learnloop.store.records import TRAJECTORY


def read_langfuse(path: Path) -> list[dict[str, Any]]:
    traces: dict[str, dict[str, Any]] = {}
    generations: dict[str, list[dict[str, Any]]] = {}
    problems: list[tuple[str, str]] = []
    for where, item in _items(json_documents(path)):
        if not isinstance(item, dict):
            problems.append(
                (where, f"expected a Langfuse trace or observation object, got {type(item).__name__}")
            )
            continue
        if "traceId" in item and "type" in item:  # an observation
            if item.get("type") == "GENERATION":
                generations.setdefault(str(item["traceId"]), []).append(item)
            continue
        if not item.get("id"):
            problems.append((where, "a trace needs its 'id' (observations need 'traceId' and 'type')"))
            continue
        traces[str(item["id"])] = item
        for obs in item.get("observations") or ():
            if isinstance(obs, dict) and obs.get("type") == "GENERATION":
                generations.setdefault(str(item["id"]), []).append(obs)
    records = []
    for trace_id, gens in generations.items():
        seen: set[str] = set()
        unique = [g for g in gens if str(g.get("id")) not in seen and not seen.add(str(g.get("id")))]
        unique.sort(key=lambda g: str(g.get("startTime") or ""))
        try:
            record = _trace_record(trace_id, traces.get(trace_id, {}), unique)
            records.append(TRAJECTORY.validate_python(record))
        except ValueError as exc:
            problems.append((f"trace {trace_id}", str(exc)))
        except ValidationError as exc:
            problems.extend(
                (f"trace {trace_id}: {error_location(e) or '(record)'}", e["msg"]) for e in exc.errors()
            )
    if problems:
        raise file_problems(path, problems, "Langfuse export")
    return records


def _items(docs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    out = []
    for where, doc in docs:
        if isinstance(doc, dict) and isinstance(doc.get("data"), list):  # a page of the public API
            out.extend((f"{where}: data[{i}]", d) for i, d in enumerate(doc["data"]))
        elif isinstance(doc, list):
            out.extend((f"{where}: [{i}]", d) for i, d in enumerate(doc))
        else:
            out.append((where, doc))
    return out


def _trajectory_id(trace_id: str) -> str:
    tid = f"langfuse-{trace_id}"
    return tid if len(tid) <= 64 else "langfuse-" + hashlib.sha256(trace_id.encode()).hexdigest()[:40]


def _trace_record(trace_id: str, trace: dict[str, Any], gens: list[dict[str, Any]]) -> dict[str, Any]:
    metadata = trace.get("metadata") if isinstance(trace.get("metadata"), dict) else {}
    flat = dict(metadata)
    nested = flat.pop("learnloop", None)
    if isinstance(nested, dict):
        flat.update({f"learnloop.{k}": v for k, v in nested.items()})
    layers = [flat, {"learnloop.tags": trace.get("tags") or []}]
    fields, tags, extra = run_fields(layers)
    kept = {k: v for k, v in metadata.items() if k != "learnloop" and not k.startswith("learnloop.")}
    langfuse = {"trace_id": trace_id}
    for key in ("name", "userId", "sessionId", "release", "version"):
        if trace.get(key):
            langfuse[key] = trace[key]
    calls = [_call(g) for g in gens]
    if len(calls) > 1:
        for g, call in zip(gens, calls):
            if g.get("id"):
                call.meta["observation_id"] = str(g["id"])
    scores = {}
    for s in trace.get("scores") or ():
        value = s.get("value") if isinstance(s, dict) else None
        if s and s.get("name") and isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                scores[str(s["name"])] = float(value)
    return trajectory_record(
        calls,
        id=_trajectory_id(trace_id),
        fields=fields,
        tags=tags,
        metadata={**kept, **extra, "langfuse": langfuse},
        scores=scores,
    )


def _call(g: dict[str, Any]) -> LlmCall:
    raw_input = maybe_json(g.get("input"))
    tools = None
    if isinstance(raw_input, dict) and "messages" in raw_input:
        tools = [t for t in (openai_tool(x) for x in raw_input.get("tools") or ()) if t is not None] or None
        raw_input = raw_input["messages"]
    if isinstance(raw_input, list):
        request = [m for m in raw_input if isinstance(m, dict)]
    elif isinstance(raw_input, dict) and "role" in raw_input:
        request = [raw_input]
    elif isinstance(raw_input, str):
        request = [{"role": "user", "content": raw_input}]
    else:
        request = []
    raw_output = maybe_json(g.get("output"))
    if isinstance(raw_output, dict) and isinstance(raw_output.get("choices"), list) and raw_output["choices"]:
        raw_output = raw_output["choices"][0].get("message")
    if isinstance(raw_output, dict) and ("content" in raw_output or "tool_calls" in raw_output):
        answer = {"role": "assistant", **raw_output}
    elif isinstance(raw_output, str):
        answer = {"role": "assistant", "content": raw_output}
    else:
        answer = None
    meta: dict[str, Any] = {}
    started, ended = _time(g.get("startTime")), _time(g.get("endTime"))
    if started and ended and ended >= started:
        meta["latency_ms"] = round((ended - started).total_seconds() * 1000, 3)
    u = g.get("usageDetails") or g.get("usage") or {}
    if isinstance(u, dict):
        used = usage(
            u.get("input", u.get("promptTokens")),
            u.get("output", u.get("completionTokens")),
            u.get("total", u.get("totalTokens")),
        )
        if used:
            meta["usage"] = used
    params = g.get("modelParameters")
    if isinstance(params, dict):
        kept = {k: v for k, v in params.items() if k in KEPT_PARAMS and v is not None}
        if kept:
            meta["params"] = kept
    error = None
    if g.get("level") == "ERROR":
        error = {"type": "Error", "message": str(g.get("statusMessage") or "")[:4000]}
    return LlmCall(
        request=request,
        answer=answer,
        model=g.get("model") or None,
        tools=tools,
        meta=meta,
        error=error,
        started=started,
    )


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)
