"""FastAPI dependencies: the app's one `Services` object, and running a job on the worker."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TypeVar

from fastapi import HTTPException, Request

from server.services import Services

T = TypeVar("T")
log = logging.getLogger("hiresd.queue")

# nginx's code for "the client closed the request"; never reaches the (gone) client, only the log
CLIENT_CLOSED = 499


def services(request: Request) -> Services:
    return request.app.state.services


async def _disconnected(request: Request) -> None:
    """Return once the client has gone. The body has been read by then, so the next ASGI message the
    server has for this request is `http.disconnect` (uvicorn sends it when the socket closes)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_on_worker(svc: Services, request: Request, name: str, fn: Callable[[], T],
                        finish_if_gone: bool = False) -> T:
    """Queue `fn` on the device worker and await it without blocking the event loop.

    A client that disconnects while its job still waits has the job dropped, never run. A running job
    whose client disconnects is interrupted (A1111 lets it run on, so a client that timed out keeps the
    worker busy for everyone), unless `finish_if_gone` (the request asked to save its images): then it
    finishes and saves. The log says which."""
    job = svc.worker.submit(name, fn)
    result = asyncio.wrap_future(job.future)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        if result not in done:
            who = f"{request.client.host}:{request.client.port}" if request.client else "-"
            if svc.worker.cancel(job):
                log.info("%s: client %s went away while the job waited; dropped", name, who)
                raise HTTPException(CLIENT_CLOSED, "client closed the request; the job was dropped before it ran")
            if finish_if_gone:
                log.info("%s: client %s went away while the job ran; it asked to save its images, so it "
                         "finishes and saves", name, who)
            elif svc.worker.interrupt(job):
                log.info("%s: client %s went away while the job ran; interrupted", name, who)
        return await result
    finally:
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await gone
