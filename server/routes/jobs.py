"""Progress, interrupt and skip: answered at once, never queued behind a job."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from server.deps import services
from server.errors import NEVER_QUEUED
from server.imagecodec import encode_image_b64
from server.services import Services

router = APIRouter(prefix="/sdapi/v1", tags=["jobs"])


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: dict[str, Any]
    current_image: str | None = None
    textinfo: str | None = None


@router.get("/progress", response_model=ProgressResponse)
async def progress(skip_current_image: bool = False, svc: Services = Depends(services)) -> ProgressResponse:
    snap = svc.worker.state.snapshot()
    image = None
    if not skip_current_image and snap["preview"] is not None:
        fmt = svc.options.get("samples_format")
        image = await run_in_threadpool(lambda: encode_image_b64(snap["preview"](), fmt))
    return ProgressResponse(progress=snap["progress"], eta_relative=snap["eta_relative"], state=snap["state"],
                            current_image=image, textinfo=snap["textinfo"])


@router.post("/interrupt", openapi_extra=NEVER_QUEUED)
async def interrupt(svc: Services = Depends(services)) -> dict[str, Any]:
    svc.worker.state.interrupt()
    return {}


@router.post("/skip", openapi_extra=NEVER_QUEUED)
async def skip(svc: Services = Depends(services)) -> None:
    svc.worker.state.skip()
    return None
