"""The one place that maps domain errors to HTTP, in A1111's error shape
`{"error": <class>, "detail": <message>, "body": "", "errors": <message>}`. Schema errors keep FastAPI's 422."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse

from pipeline.errors import Interrupted, ModelLoadError, PipelineError
from pipeline.vae import is_oom
from pipeline.worker import QueueFull, WorkerStopped
from server.imagecodec import ImageDecodeError
from upscalers.errors import UpscalerError

log = logging.getLogger("hiresd.errors")


def error_body(exc: BaseException, detail: str | None = None) -> dict[str, str]:
    text = detail if detail is not None else str(exc)
    return {"error": type(exc).__name__, "detail": text, "body": "", "errors": text}


def _status(exc: BaseException) -> int:
    if isinstance(exc, (QueueFull, WorkerStopped)):
        return 503
    if isinstance(exc, ModelLoadError):
        return 500
    if isinstance(exc, (PipelineError, ImageDecodeError, UpscalerError)):
        return 400
    return 500


def install(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 shape; inputs that JSON cannot carry (NaN, infinity) are shown as strings."""
        return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)

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
    for cls in (PipelineError, ImageDecodeError, UpscalerError, QueueFull, WorkerStopped, Exception):
        app.add_exception_handler(cls, any_error)


def _json_safe(value: object) -> object:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value
