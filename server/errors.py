"""The one place that maps domain errors to HTTP, in A1111's error shape
`{"error": <class>, "detail": <message>, "body": "", "errors": <message>}`. Schema errors keep FastAPI's 422."""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.models.vae_codec import is_oom
from pipeline.runtime.errors import Interrupted, ModelLoadError, PipelineError, UnknownScript
from pipeline.runtime.registry import TaskIdInUse
from pipeline.runtime.worker import QueueFull, WorkerLost, WorkerStopped
from server.auth import is_protected
from server.imagecodec import ImageDecodeError
from upscalers.errors import UpscalerError

log = logging.getLogger("hiresd.errors")


class ErrorResponse(BaseModel):
    """A1111's error body (`modules/api/api.py`): every error except schema validation has this shape."""

    error: str = Field(description="the exception class, e.g. PipelineError, HTTPException")
    detail: str = Field(description="what is wrong and what would be right")
    body: str = Field(description="always empty (A1111 fills it with the request body in debug mode)")
    errors: str = Field(description="the same message as detail")


def error_body(exc: BaseException, detail: str | None = None) -> dict[str, str]:
    text = detail if detail is not None else str(exc)
    return {"error": type(exc).__name__, "detail": text, "body": "", "errors": text}


def _status(exc: BaseException) -> int:
    if isinstance(exc, (QueueFull, WorkerStopped, WorkerLost)):
        return 503
    if isinstance(exc, TaskIdInUse):
        return 409
    if isinstance(exc, ModelLoadError):
        return 500
    if isinstance(exc, UnknownScript):  # A1111's status for a script it does not have
        return 422
    if isinstance(exc, (PipelineError, ImageDecodeError, UpscalerError)):
        return 400
    return 500


def allowed_methods(request: Request) -> list[str] | None:
    """The methods openapi.json lists for this request's path (Starlette's 405 names only the first
    route's), or None when the path is not one of the schema's."""
    item = request.app.openapi().get("paths", {}).get(request.url.path)
    return sorted(m.upper() for m in item) if item else None


def install(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def routing_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Unknown paths keep FastAPI's 404 and 405 (as A1111), a 405's Allow header naming every method of
        the path; the rest (a body that cannot be parsed) get A1111's error shape."""
        if exc.status_code == 405:
            methods = allowed_methods(request)
            if methods:
                allow = {"Allow": ", ".join(methods)}
                return JSONResponse({"detail": exc.detail}, status_code=405, headers=allow)
        if exc.status_code in (404, 405):
            return await http_exception_handler(request, exc)
        detail = str(exc.detail)
        if detail == "There was an error parsing the body":
            detail = ("the body is not JSON this server can read (send UTF-8 JSON with content-type "
                      "application/json)")
        return JSONResponse(error_body(exc, detail), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 shape; inputs that JSON cannot carry (NaN, infinity) are shown as strings, inputs
        too deeply nested to encode are left out."""
        return JSONResponse({"detail": [_encodable(e) for e in exc.errors()]}, status_code=422)

    async def any_error(request: Request, exc: Exception) -> JSONResponse:
        status = _status(exc)
        headers = {"Retry-After": "5"} if status == 503 else None
        if is_oom(exc):
            body = error_body(exc, "out of memory on the device even after tiled fallbacks; lower the size, "
                              "batch_size or hr_scale")
        elif isinstance(exc, Interrupted):
            body = error_body(exc, "interrupted")
        else:
            body = error_body(exc)
        if status >= 500 and status != 503:
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(body, status_code=status, headers=headers)

    # the domain errors get their own handlers so they are answered without a server-error traceback
    for cls in (PipelineError, ImageDecodeError, UpscalerError, QueueFull, WorkerStopped, WorkerLost,
                TaskIdInUse, Exception):
        app.add_exception_handler(cls, any_error)


def _encodable(error: Any) -> object:
    try:
        return _json_safe(jsonable_encoder(error))
    except (RecursionError, ValueError):
        return _json_safe(jsonable_encoder({k: v for k, v in error.items() if k != "input"}))


def _json_safe(value: object) -> object:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


# -- the error statuses in openapi.json --------------------------------------------------------------------
# Added to the generated schema for every operation, so that routes added later are documented without
# declaring anything. A route that declares a status itself (`responses={404: ...}`) keeps its own entry.

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
_DESCRIPTIONS = {
    "400": "Bad input found before any work: an unknown sampler, scheduler, upscaler, checkpoint, style or "
           "option, an image that cannot be decoded, a size or count above the server's limits (the "
           "message names the limit and the flag that raises it).",
    "401": "Only when the server runs with --api-auth: no or wrong HTTP Basic credentials "
           "(`WWW-Authenticate: Basic`).",
    "413": "The request body is larger than --max-body-mb; it is refused before it is read.",
    "422": "The body does not match the schema (FastAPI's `detail` list), or an `alwayson_scripts` entry "
           "names a script the server does not have (A1111's error body).",
    "500": "An unexpected failure, or a model file that could not be loaded.",
    "503": "The job queue is full, the server is stopping, or (scaled out) the worker running the job died; "
           "retry after `Retry-After` seconds.",
}


def _error_response(status: str) -> dict[str, Any]:
    out: dict[str, Any] = {"description": _DESCRIPTIONS[status],
                           "content": {"application/json": {"schema": ERROR_REF}}}
    if status == "401":
        out["headers"] = {"WWW-Authenticate": {"description": "`Basic realm=\"hiresd\"`",
                                               "schema": {"type": "string"}}}
    if status == "503":
        out["headers"] = {"Retry-After": {"description": "seconds to wait before retrying",
                                          "schema": {"type": "integer"}}}
    return out


# `openapi_extra=NEVER_QUEUED` on a POST route that answers at once (no job on the worker): no 503.
NEVER_QUEUED: dict[str, Any] = {"x-never-queued": True}


def standard_statuses(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    """The error statuses an operation can answer: every one 500, and 401 where --api-auth guards it; one
    with a body also 400, 413 and 422; a POST 503 (it may queue a job on the worker) unless it is marked
    NEVER_QUEUED."""
    statuses = ["500"] + (["401"] if is_protected(path) else [])
    if "requestBody" in operation:
        statuses += ["400", "413", "422"]
    if method == "post" and not operation.get("x-never-queued"):
        statuses.append("503")
    return sorted(statuses)


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the A1111 error model and the standard error responses to a generated OpenAPI schema."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorResponse"] = ErrorResponse.model_json_schema()
    for path, path_item in schema.get("paths", {}).items():
        for method, operation in path_item.items():
            responses = operation.setdefault("responses", {})
            for status in standard_statuses(path, method, operation):
                if status not in responses:
                    responses[status] = _error_response(status)
                elif status == "422":  # FastAPI's own entry: schema validation, or A1111's script error
                    content = responses["422"].setdefault("content", {}).setdefault("application/json", {})
                    fastapi_schema = content.get("schema")
                    if fastapi_schema and fastapi_schema != ERROR_REF and "anyOf" not in fastapi_schema:
                        content["schema"] = {"anyOf": [fastapi_schema, ERROR_REF]}
                    responses["422"]["description"] = _DESCRIPTIONS["422"]
    return schema


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` (and /openapi.json) include the documented error responses."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
