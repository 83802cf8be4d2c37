"""Maintenance: memory, command-line flags, Gradio-style /login for bots, and the server-stop /
server-kill / server-restart routes that exist only with --api-server-stop (as in A1111)."""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
from typing import Any
from urllib.parse import parse_qs

import psutil
import torch
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from server.auth import check_basic
from server.config import ServerConfig
from server.deps import services
from server.errors import NEVER_QUEUED
from server.services import Services

log = logging.getLogger("hiresd.maintenance")
router = APIRouter(prefix="/sdapi/v1", tags=["maintenance"])
login_router = APIRouter(tags=["maintenance"])


class MemoryResponse(BaseModel):
    ram: dict[str, Any]
    cuda: dict[str, Any]


def ram_figures() -> dict[str, float]:
    """A1111's `ram`: this process's resident memory as `used`, the machine's RAM as `total` (bytes)."""
    proc = psutil.Process(os.getpid())
    rss = float(proc.memory_info().rss)
    total = float(psutil.virtual_memory().total)
    return {"free": total - rss, "used": rss, "total": total}


def cuda_figures() -> dict[str, Any]:
    """A1111's `cuda` block from torch.cuda (bytes), or `{"error": ...}` without a CUDA device."""
    if not torch.cuda.is_available():
        return {"error": "unavailable"}
    try:
        free, total = torch.cuda.mem_get_info()
        s = torch.cuda.memory_stats()

        def pair(key: str) -> dict[str, int]:
            return {"current": int(s.get(f"{key}.all.current", 0)), "peak": int(s.get(f"{key}.all.peak", 0))}

        return {
            "system": {"free": free, "used": total - free, "total": total},
            "active": pair("active_bytes"),
            "allocated": pair("allocated_bytes"),
            "reserved": pair("reserved_bytes"),
            "inactive": pair("inactive_split_bytes"),
            "events": {"retries": int(s.get("num_alloc_retries", 0)), "oom": int(s.get("num_ooms", 0))},
        }
    except Exception as exc:  # noqa: BLE001 - report, never fail the endpoint
        return {"error": f"{type(exc).__name__}: {exc}"}


@router.get("/memory", response_model=MemoryResponse)
async def memory() -> MemoryResponse:
    return MemoryResponse(ram=ram_figures(), cuda=cuda_figures())


@router.get("/cmd-flags")
async def cmd_flags(svc: Services = Depends(services)) -> dict[str, Any]:
    """The launch flags: our argparse values under their own names, plus A1111's names for the same
    settings (`listen`, `ckpt_dir`, `vae_dir`, `no_half`, ...). Passwords in `api_auth` are masked."""
    return svc.config.cmd_flags()


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", "replace")
    ctype = request.headers.get("content-type", "")
    if "json" in ctype:
        try:
            data = json.loads(body or "{}")
            return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        except ValueError:
            return {}
    return {k: v[0] for k, v in parse_qs(body).items()}


class LoginError(BaseModel):
    detail: str


@login_router.post("/login", openapi_extra=NEVER_QUEUED, responses={
    400: {"model": LoginError, "description": "With --api-auth: wrong username or password (Gradio's answer)"},
})
async def login(request: Request) -> JSONResponse:
    """Gradio's login form, which some bots (AIYA) POST before calling the API. Without --api-auth it
    answers 200 `{"success": true}`; with it, 200 when the form's username/password pair is valid and
    400 `Incorrect credentials.` otherwise (Gradio's answer). It opens no session: API calls still need
    their Basic auth header."""
    config: ServerConfig = request.app.state.config
    if not config.api_auth:
        return JSONResponse({"success": True})
    form = await _form(request)
    user, pw = form.get("username", ""), form.get("password", "")
    header = "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
    if check_basic(header, config.api_auth):
        return JSONResponse({"success": True})
    return JSONResponse({"detail": "Incorrect credentials."}, status_code=400)


def install_server_control(app: FastAPI, config: ServerConfig) -> None:
    """server-stop (graceful, like SIGTERM), server-kill (immediate exit) and server-restart (501: this
    process is not launched by a restarting wrapper), only with --api-server-stop."""
    app.include_router(login_router)
    if not config.api_server_stop:
        return
    control = APIRouter(prefix="/sdapi/v1", tags=["maintenance"])

    def stop_gracefully() -> None:
        stop = getattr(app.state, "stop_server", None)
        if callable(stop):
            stop()
        else:
            os.kill(os.getpid(), signal.SIGTERM)

    async def kill_soon() -> None:
        await asyncio.sleep(0.1)
        log.warning("server-kill: exiting now")
        os._exit(0)

    @control.post("/server-stop", response_class=PlainTextResponse)
    async def server_stop() -> PlainTextResponse:
        return PlainTextResponse("Stopping.", background=BackgroundTask(stop_gracefully))

    @control.post("/server-kill")
    async def server_kill() -> Response:
        return Response(status_code=200, background=BackgroundTask(kill_soon))

    @control.post("/server-restart")
    async def server_restart() -> Response:
        return Response(status_code=501)

    app.include_router(control)
