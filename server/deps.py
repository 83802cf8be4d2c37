"""FastAPI dependencies: the app's one `Services` object, and running a job on the worker."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request

from server.services import Services

T = TypeVar("T")


def services(request: Request) -> Services:
    return request.app.state.services


async def run_on_worker(svc: Services, request: Request, name: str, fn: Callable[[], T]) -> T:
    """Queue `fn` on the device worker and await it without blocking the event loop. A client that
    disconnects while its job still waits has the job dropped, never run."""
    job = svc.worker.submit(name, fn)
    fut = asyncio.wrap_future(job.future)
    while True:
        done, _ = await asyncio.wait({fut}, timeout=0.25)
        if done:
            return fut.result()
        if await request.is_disconnected() and svc.worker.cancel(job):
            raise asyncio.CancelledError()
