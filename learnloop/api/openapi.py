"""The OpenAPI document, kept true to what the server answers.

FastAPI documents a 422 shape learnloop never sends, knows nothing of the answers given outside
the route (401 from the auth check, 413 from the body limit, 429/503 with Retry-After) and would
show the bearer token as a header parameter. This module adds what routes can answer, the
error schema, the request bodies of routes that read their own body (auth comes first, see
``api.deps``) and the token as an HTTP bearer security scheme, required only where the
settings make it so.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field, TypeAdapter

from learnloop.config import Settings


class Problem(BaseModel):
    loc: str = Field(description="Path of the bad field, e.g. trajectories.3.messages.0.role.")
    msg: str


class ErrorResponse(BaseModel):
    """Every error answer: ``error`` says what was wrong and what to do (``detail`` repeats it)."""

    error: str
    detail: str
    problems: list[Problem] | None = Field(None, description="With 422: each bad field.")


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    """Errors of the OpenAI-compatible routes, in OpenAI's shape."""

    error: OpenAIErrorBody


_DESCRIPTIONS = {
    400: "The body is not JSON. Nothing was stored.",
    401: "A bearer token is required and was missing or wrong.",
    404: "A named trajectory is not stored. Nothing was stored.",
    409: "The request contradicts what is stored. Nothing was stored.",
    413: "Body over server.max_request_bytes, or batch over server.max_batch_size. Nothing was stored.",
    422: "Invalid input; `problems` names each bad field. Nothing was stored.",
    429: "Ingest queue full; retry the same request after Retry-After seconds.",
    503: "Database unreachable or busy; retry after Retry-After seconds.",
}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
}

SCHEME = "bearerToken"
_REF = "#/components/schemas/{model}"
# JSON schemas of bodies that routes read themselves, by component name (see request_body).
_BODIES: dict[str, TypeAdapter[Any]] = {}


def error_responses(*statuses: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with the error schema. ``described`` overrides the
    generic description of a status for this route (``_404="No such version."``)."""
    return {
        s: {"model": ErrorResponse, "description": described.get(f"_{s}", _DESCRIPTIONS[s])} for s in statuses
    }


# Marks an operation whose errors come in OpenAI's shape (``openapi_extra=``); removed from the document.
OPENAI_SHAPE = "x-learnloop-openai-errors"


def openai_error_responses(*statuses: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for an OpenAI-compatible route: each status with OpenAI's error schema."""
    return {
        s: {"model": OpenAIErrorResponse, "description": described.get(f"_{s}", _DESCRIPTIONS[s])}
        for s in statuses
    }


def request_body(name: str, adapter: TypeAdapter[Any]) -> dict[str, Any]:
    """``openapi_extra=`` for a route that reads its JSON body itself, documented as ``name``."""
    _BODIES[name] = adapter
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=name)}}},
        }
    }


def build_openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    from learnloop.api.deps import READ_SCHEME, SERVING_SCHEME, WRITE_SCHEME

    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name, adapter in _BODIES.items():
        body = adapter.json_schema(ref_template=_REF)
        schemas.update(body.pop("$defs", {}))
        schemas[name] = body
    schemas.setdefault("ErrorResponse", ErrorResponse.model_json_schema(ref_template=_REF))
    for name, sub in ErrorResponse.model_json_schema(ref_template=_REF).get("$defs", {}).items():
        schemas.setdefault(name, sub)
    for model in (OpenAIErrorResponse, OpenAIErrorBody):
        schemas.setdefault(model.__name__, model.model_json_schema(ref_template=_REF))
        schemas[model.__name__].pop("$defs", None)
    error = {"application/json": {"schema": {"$ref": _REF.format(model="ErrorResponse")}}}
    openai_error = {"application/json": {"schema": {"$ref": _REF.format(model="OpenAIErrorResponse")}}}
    serving_key = settings.serving.api_key or settings.api_token
    any_token = (
        settings.api_token is not None or settings.server.read_token is not None or serving_key is not None
    )
    schemes = doc["components"].pop("securitySchemes", {})
    for name in (WRITE_SCHEME.scheme_name, READ_SCHEME.scheme_name, SERVING_SCHEME.scheme_name):
        schemes.pop(name, None)
    if any_token:
        schemes[SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "LEARNLOOP_API_TOKEN for writes; "
            "server.read_token (or the write token) for reads when it is set.",
        }
    if schemes:
        doc["components"]["securitySchemes"] = schemes
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            marked = {name for alt in op.pop("security", []) for name in alt}
            needs_token = (
                (WRITE_SCHEME.scheme_name in marked and settings.api_token is not None)
                or (READ_SCHEME.scheme_name in marked and settings.server.read_token is not None)
                or (SERVING_SCHEME.scheme_name in marked and serving_key is not None)
            )
            openai_shape = bool(op.pop(OPENAI_SHAPE, False))
            responses = op.setdefault("responses", {})
            extra = {503}
            if needs_token:
                op["security"] = [{SCHEME: []}]
                extra.add(401)
            if method in ("post", "put", "patch"):
                extra |= {400, 413} if openai_shape else {400, 413, 422}
            if (
                "{" in path or op.get("parameters")
            ) and not openai_shape:  # OpenAI's routes answer 400, never 422
                extra.add(422)
            for status in sorted(extra):
                responses.setdefault(str(status), {"description": _DESCRIPTIONS[status]})
            for status, answer in responses.items():
                if status.startswith(("4", "5")):
                    # FastAPI's own 422 shape (HTTPValidationError) is never sent: ours is. A route
                    # that declared its own model for a status (/readyz's 503) keeps it.
                    declared = str(answer.get("content"))
                    if (
                        "content" not in answer
                        or "HTTPValidationError" in declared
                        or "ErrorResponse" in declared
                    ):
                        answer["content"] = openai_error if openai_shape else error
                    if status in ("429", "503"):
                        answer["headers"] = _RETRY_AFTER
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    state_text_rules(doc)
    return doc


# The rules every request body follows (see ``learnloop.store.records`` and ``parse_json_body``),
# stated in the document so that what it calls valid is accepted: no NUL character in any string
# or key (PostgreSQL cannot store one), and values of free-form fields (metadata, tool arguments)
# made of JSON that follows the same rule. Nesting limits are in the descriptions (JSON Schema
# cannot count depth).
NO_NUL = "^[^\\x00]*$"
JSON_VALUE = "JsonValue"
# pydantic names the bounds of a type behind a validator by their Python names; JSON Schema's own:
_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}
# Formats whose own grammar has no NUL (a pattern beside them would only slow generation down).
_FORMATS_WITHOUT_NUL = ("date-time", "date", "time", "binary", "byte", "uuid")
_JSON_VALUE_SCHEMA: dict[str, Any] = {
    "description": "Any JSON value without a NUL character in its strings or keys; a record nests at "
    "most 64 levels of objects and arrays, any request body at most 200.",
    "anyOf": [
        {"type": "string", "pattern": NO_NUL},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "array", "items": {"$ref": _REF.format(model=JSON_VALUE)}},
        {
            "type": "object",
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": {"$ref": _REF.format(model=JSON_VALUE)},
        },
    ],
}


def state_text_rules(doc: dict[str, Any]) -> None:
    """Put the text rules into every schema a request sends: request bodies (and the components
    they use) and parameters."""
    schemas = doc["components"]["schemas"]
    seen: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item)
            return
        if not isinstance(node, dict):
            return
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[1]
            if name not in seen and name in schemas:
                seen.add(name)
                visit(schemas[name])
            return
        for short, keyword in _BOUNDS.items():
            if short in node:
                node[keyword] = node.pop(short)
        kind = node.get("type")
        if (
            kind == "string"
            and "pattern" not in node
            and "enum" not in node
            and node.get("format") not in _FORMATS_WITHOUT_NUL
        ):
            node["pattern"] = NO_NUL
        if kind == "object" and node.get("additionalProperties") not in (False, None):  # a free-form map
            node.setdefault("propertyNames", {"pattern": NO_NUL})
            if node["additionalProperties"] in (True, {}):
                node["additionalProperties"] = {"$ref": _REF.format(model=JSON_VALUE)}
        for key in ("items", "additionalProperties"):  # never into "not": a rule there would flip
            if isinstance(node.get(key), dict):
                if node[key] == {}:
                    node[key] = {"$ref": _REF.format(model=JSON_VALUE)}
                visit(node[key])
        properties = node.get("properties") or {}
        for name, sub in list(properties.items()):
            if sub == {} or set(sub) <= {"title", "description", "default"}:  # Any
                properties[name] = {**sub, "$ref": _REF.format(model=JSON_VALUE)}
            visit(properties[name])
        for key in ("anyOf", "allOf", "oneOf"):
            visit(node.get(key))

    schemas[JSON_VALUE] = _JSON_VALUE_SCHEMA
    seen.add(JSON_VALUE)
    for methods in doc["paths"].values():
        for op in methods.values():
            for content in ((op.get("requestBody") or {}).get("content") or {}).values():
                visit(content.get("schema"))
            for parameter in op.get("parameters", ()):
                visit(parameter.get("schema"))


def install_openapi(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
