"""`create_app(config)`: the FastAPI app with its one `Services` object, middleware and routes.

Middleware, outermost first: CORS (only when --cors-allow-origins[-regex] is given), the per-request
log line and `X-Process-Time` header, Basic auth (only with --api-auth), the body-size limit
(--max-body-mb, 413), GZip (not on the routes that answer with images). All are plain ASGI middleware, so
that routes still see their client disconnect (Starlette's BaseHTTPMiddleware hides it)."""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import errors
from server.auth import BasicAuthMiddleware
from server.bodylimit import MIB, BodyLimitMiddleware
from server.config import ServerConfig
from server.gzipping import GZipExceptImages
from server.routes import (
    agent_scheduler,
    controlnet,
    extras,
    generation,
    img2img,
    internal,
    jobs,
    listing,
    maintenance,
    models_control,
    options,
)
from server.services import Services
from server.tasks import AsyncTasks

log = logging.getLogger("hiresd.api")


class TimingLogMiddleware:
    """Adds `X-Process-Time` (seconds until the response starts, 4 decimals) and, with `log_requests`,
    logs one line per /sdapi request: method, path, status, duration, client."""

    def __init__(self, app: ASGIApp, log_requests: bool) -> None:
        self.app = app
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_timed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-process-time", f"{time.perf_counter() - start:.4f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        finally:
            if self.log_requests and scope["path"].startswith("/sdapi"):
                client = scope.get("client")
                who = f"{client[0]}:{client[1]}" if client else "-"
                log.info("%s %s %d %.3fs %s", scope["method"], scope["path"], status,
                         time.perf_counter() - start, who)


def create_app(config: ServerConfig, services: Services | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if getattr(app.state, "services", None) is None:
            app.state.services = Services.create(config)
        if getattr(app.state, "tasks", None) is None:  # the stored async tasks queued again (server/tasks.py)
            app.state.tasks = await AsyncTasks.open(app.state.services)
        yield
        app.state.services.shutdown()
        app.state.tasks.close()

    app = FastAPI(title="hiresd", version="0.1.0", lifespan=lifespan,
                  description="AUTOMATIC1111 /sdapi/v1-compatible hires-fix and upscaling server")
    app.state.services = services
    app.state.tasks = None
    app.state.config = config
    errors.install(app)
    errors.install_openapi(app)
    app.add_middleware(GZipExceptImages, minimum_size=1000)  # not the image routes: see server/gzipping.py
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_mb * MIB)
    if config.api_auth:
        app.add_middleware(BasicAuthMiddleware, credentials=config.api_auth)
    app.add_middleware(TimingLogMiddleware, log_requests=config.api_log)
    if config.cors_allow_origins or config.cors_allow_origins_regex:
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_allow_origins,
                           allow_origin_regex=config.cors_allow_origins_regex, allow_credentials=True,
                           allow_methods=["*"], allow_headers=["*"])
    for module in (generation, img2img, jobs, listing, options, extras, maintenance, internal, models_control,
                   agent_scheduler, controlnet):
        app.include_router(module.router)
    maintenance.install_server_control(app, config)
    return app
