"""`create_app(config)`: the FastAPI app with its one `Services` object, middleware and routes."""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware

from server import errors
from server.auth import install_auth
from server.config import ServerConfig
from server.routes import extras, generation, jobs, listing, options
from server.services import Services

log = logging.getLogger("hiresd.api")


def create_app(config: ServerConfig, services: Services | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if getattr(app.state, "services", None) is None:
            app.state.services = Services.create(config)
        yield
        app.state.services.shutdown()

    app = FastAPI(title="hiresd", version="0.1.0", lifespan=lifespan,
                  description="AUTOMATIC1111 /sdapi/v1-compatible hires-fix and upscaling server")
    app.state.services = services
    app.state.config = config
    errors.install(app)
    if config.cors_allow_origins or config.cors_allow_origins_regex:
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_allow_origins,
                           allow_origin_regex=config.cors_allow_origins_regex, allow_credentials=True,
                           allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(GZipMiddleware, minimum_size=1000)

    @app.middleware("http")
    async def timing_and_log(request: Request, call_next) -> Response:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        response = await call_next(request)
        took = time.perf_counter() - start
        response.headers["X-Process-Time"] = f"{took:.4f}"
        if config.api_log and request.url.path.startswith("/sdapi"):
            client = f"{request.client.host}:{request.client.port}" if request.client else "-"
            log.info("%s %s %d %.3fs %s", request.method, request.url.path, response.status_code, took, client)
        return response

    install_auth(app, config.api_auth)
    for module in (generation, jobs, listing, options, extras):
        app.include_router(module.router)
    return app
