"""OTLP/HTTP trace ingest: ``POST /otlp/v1/traces``, so a stock exporter pointed at learnloop
(``OTEL_EXPORTER_OTLP_ENDPOINT=http://host:8377/otlp``) delivers an app's GenAI spans.

The route decodes (protobuf or JSON, gzip or deflate), maps with ``learnloop.capture.otlp`` and
stores through the same ingest as ``/v1/ingest``, committed before the answer. Answers follow the
OTLP/HTTP specification: an ``ExportTraceServiceResponse`` in the request's encoding, with
``partial_success`` when some LLM call spans were refused; errors as a ``google.rpc.Status`` in
the request's encoding (the JSON one also carries learnloop's ``error``/``detail``).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import zlib
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from learnloop.api.deps import DbDep, SettingsDep, WriteAuth, ingest_slot
from learnloop.capture.otlp import (
    Mapped,
    decode_json,
    decode_protobuf,
    flush_overdue,
    map_spans,
    store_export,
)
from learnloop.config import Settings
from learnloop.errors import LearnloopError, Overloaded, StoreUnavailable, Unparsable, ValidationFailed
from learnloop.store.db import Database
from learnloop.watch import count_ingested, count_otlp_spans

log = logging.getLogger("learnloop.api")

PROTOBUF, JSON = "application/x-protobuf", "application/json"
STORE_RETRY_AFTER = 5
FLUSH_EVERY = 30.0
# google.rpc.Code for each HTTP status this route answers with.
_RPC_CODES = {400: 3, 401: 16, 404: 5, 413: 8, 415: 3, 429: 8, 500: 13, 503: 14}


class OtlpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _encoding(request: Request) -> str:
    kind = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    return JSON if kind == JSON else PROTOBUF


def _status_response(request: Request, status: int, message: str, headers: dict[str, str] | None) -> Response:
    code = _RPC_CODES.get(status, 2)
    if _encoding(request) == JSON:
        import json

        body = json.dumps({"code": code, "message": message, "error": message, "detail": message})
        return Response(body, status_code=status, media_type=JSON, headers=headers)
    from google.rpc.status_pb2 import Status

    return Response(
        Status(code=code, message=message).SerializeToString(),
        status_code=status,
        media_type=PROTOBUF,
        headers=headers,
    )


class OtlpRoute(APIRoute):
    """Answers every error of its routes (the token check and the body limit included) as OTLP's
    ``Status`` in the request's encoding, not as learnloop's JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except OtlpError as exc:
                return _status_response(request, exc.status, exc.message, exc.headers)
            except HTTPException as exc:
                headers = getattr(exc, "headers", None)
                return _status_response(request, exc.status_code, str(exc.detail), headers)
            except (Unparsable, ValidationFailed) as exc:
                return _status_response(request, 400, str(exc), None)
            except Overloaded as exc:
                retry = {"Retry-After": str(max(1, round(exc.retry_after)))}
                return _status_response(request, 429, str(exc), retry)
            except StoreUnavailable:
                text = "The database is unreachable or busy. Nothing was stored; retry after Retry-After s."
                return _status_response(request, 503, text, {"Retry-After": str(STORE_RETRY_AFTER)})
            except LearnloopError as exc:
                return _status_response(request, 400, str(exc), None)

        return route


router = APIRouter(prefix="/otlp/v1", tags=["otlp"], route_class=OtlpRoute)


def _body(raw: bytes, encoding_header: str | None, limit: int) -> bytes:
    """The export's bytes: decompressed (gzip, deflate) and at most ``limit`` bytes once decompressed."""
    encoding = (encoding_header or "identity").strip().lower()
    if encoding in ("identity", ""):
        return raw
    if encoding not in ("gzip", "deflate"):
        raise OtlpError(
            415,
            f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or none. "
            "Nothing was stored.",
        )
    # wbits: 16+ reads a gzip header, + reads zlib's (deflate as HTTP means it); max_length bounds a bomb.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise OtlpError(400, f"The body is not valid {encoding} ({exc}). Nothing was stored.") from None
    if len(body) > limit:
        raise OtlpError(
            413,
            f"The export is larger than {limit} bytes once decompressed (server.max_request_bytes). "
            "Lower the exporter's batch size (OTEL_BSP_MAX_EXPORT_BATCH_SIZE); nothing was stored.",
        )
    if not inflater.eof:
        raise OtlpError(400, f"The {encoding} body is cut short. Nothing was stored.")
    return body


def _map(body: bytes, encoding: str, settings: Settings) -> Mapped:
    spans = decode_json(body) if encoding == JSON else decode_protobuf(body)
    if len(spans) > settings.server.max_batch_size:
        raise OtlpError(
            413,
            f"The export holds {len(spans)} spans; the most accepted in one request is "
            f"{settings.server.max_batch_size} (server.max_batch_size). Lower the exporter's batch size "
            "(OTEL_BSP_MAX_EXPORT_BATCH_SIZE); nothing was stored.",
        )
    return map_spans(spans)


def _store(db: Database, settings: Settings, mapped: Mapped, flush: bool) -> None:
    where = {
        "project": settings.project,
        "holdout_fraction": settings.datasets.holdout_fraction,
        "window": settings.capture.window,
    }
    stored = store_export(db, mapped, **where)
    count_ingested({"inserted": stored.trajectories, "duplicates": stored.duplicates})
    if not flush:
        return
    try:  # runs whose root span never came; a failure here must not fail the export just stored
        timeout = dt.timedelta(seconds=settings.server.otlp_run_timeout_seconds)
        late = flush_overdue(db, timeout, **where)
        count_ingested({"inserted": late.trajectories, "duplicates": late.duplicates})
    except Exception:
        log.exception("could not store the OTLP calls whose trace's root span never came")


@router.post("/traces", dependencies=[WriteAuth], include_in_schema=False)
async def export_traces(request: Request, db: DbDep, settings: SettingsDep) -> Response:
    """OTLP/HTTP ``ExportTraceServiceRequest``: LLM call spans become trajectories (see capture.otlp)."""
    kind = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if kind not in (PROTOBUF, JSON):
        raise OtlpError(
            415,
            f"Content-Type {kind or '(none)'!r} is not OTLP: send application/x-protobuf or "
            "application/json. Nothing was stored.",
        )
    limit = settings.server.max_request_bytes
    body = _body(await request.body(), request.headers.get("content-encoding"), limit)
    mapped = await run_in_threadpool(_map, body, kind, settings)
    # Overdue runs are looked for at most every FLUSH_EVERY seconds (or the run timeout, if shorter).
    now = time.monotonic()
    last = getattr(request.app.state, "otlp_flushed_at", None)
    flush = last is None or now - last >= min(FLUSH_EVERY, settings.server.otlp_run_timeout_seconds)
    if flush:
        request.app.state.otlp_flushed_at = now
    with ingest_slot(request):
        await run_in_threadpool(_store, db, settings, mapped, flush)
    accepted = max(0, mapped.llm_spans - len(mapped.rejected))  # a refused run may hold earlier calls
    for outcome, n in (
        ("accepted", accepted),
        ("ignored", mapped.ignored),
        ("rejected", len(mapped.rejected)),
    ):
        count_otlp_spans(outcome, n)
    return _export_response(kind, mapped)


def _export_response(kind: str, mapped: Mapped) -> Response:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    answer = ExportTraceServiceResponse()
    if mapped.rejected:
        answer.partial_success.rejected_spans = len(mapped.rejected)
        answer.partial_success.error_message = mapped.rejection_message()
    headers = {"X-Learnloop-Ignored-Spans": str(mapped.ignored)}
    if kind == JSON:
        from google.protobuf import json_format

        return Response(json_format.MessageToJson(answer, indent=None), media_type=JSON, headers=headers)
    return Response(answer.SerializeToString(), media_type=PROTOBUF, headers=headers)
