"""A1111's per-task progress routes (modules/progress.py), what its UI polls: `POST /internal/progress`
for one task by id and `GET /internal/pending-tasks`. Answered at once, never queued."""
from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from pipeline.runtime.registry import RUNNING
from server.deps import services
from server.errors import NEVER_QUEUED
from server.imagecodec import encode_image_b64
from server.services import Services

router = APIRouter(prefix="/internal", tags=["jobs"])

class InternalProgressRequest(BaseModel):
    id_task: str | None = Field(None, description="the task id (the request's force_task_id)")
    id_live_preview: int = Field(-1, description="the id of the preview the client has; a newer one is sent")
    live_preview: bool = Field(True, description="send the live preview")


class InternalProgressResponse(BaseModel):
    active: bool = Field(description="the task is being worked on right now")
    queued: bool = Field(description="the task waits in the queue")
    completed: bool = Field(description="the task has finished")
    progress: float | None = Field(None, description="0..1")
    eta: float | None = Field(None, description="seconds left, estimated")
    live_preview: str | None = Field(None, description="the newest preview as a data: URL")
    id_live_preview: int | None = Field(None, description="the id of the preview sent (send it back)")
    textinfo: str | None = Field(None, description="'In queue: 2/3', 'Waiting...' or the step under way")


class PendingTasksResponse(BaseModel):
    size: int = Field(description="the number of waiting tasks")
    tasks: list[str] = Field(description="the waiting tasks' ids, next first")


def preview_data_url(image: Image.Image, fmt: str) -> str:
    """A live preview as A1111's /internal/progress sends it: a `data:image/<fmt>;base64,` URL in the
    format of option `live_previews_image_format` ("png", "jpeg" or "webp")."""
    data = encode_image_b64(image, fmt)
    return f"data:image/{fmt};base64,{data}"


@router.post("/progress", response_model=InternalProgressResponse, openapi_extra=NEVER_QUEUED)
async def progress(req: InternalProgressRequest,
                   svc: Services = Depends(services)) -> InternalProgressResponse:
    info, position = svc.worker.task(req.id_task) if req.id_task else (None, None)
    active = info is not None and info.status == RUNNING
    queued = position is not None
    completed = info is not None and not active and not queued
    if not active:
        text = f"In queue: {position + 1}/{len(svc.worker.pending_tasks())}" if queued else "Waiting..."
        return InternalProgressResponse(active=False, queued=queued, completed=completed, id_live_preview=-1,
                                        textinfo=text)
    state = svc.worker.state_of(req.id_task)
    if state is None:  # it ended between the two looks
        return InternalProgressResponse(active=False, queued=False, completed=True, id_live_preview=-1,
                                        textinfo="Waiting...")
    snap = state.snapshot()
    st = snap["state"]
    done = 0.0
    if st["job_count"] > 0:
        done = st["job_no"] / st["job_count"]
        if st["sampling_steps"] > 0:
            done += st["sampling_step"] / st["sampling_steps"] / st["job_count"]
    done = min(done, 1.0)
    elapsed = time.time() - (info.started or time.time())
    eta = elapsed / done - elapsed if done > 0 else None
    preview, preview_id = None, req.id_live_preview
    if (req.live_preview and svc.options.get("live_previews_enable") and snap["preview"] is not None
            and snap["preview_id"] != req.id_live_preview):
        fmt = str(svc.options.get("live_previews_image_format") or "png")
        preview = await run_in_threadpool(lambda: preview_data_url(snap["preview"](), fmt))
        preview_id = snap["preview_id"]
    return InternalProgressResponse(active=True, queued=False, completed=False, progress=done, eta=eta,
                                    live_preview=preview, id_live_preview=preview_id,
                                    textinfo=snap["textinfo"])


@router.get("/pending-tasks", response_model=PendingTasksResponse)
async def pending_tasks(svc: Services = Depends(services)) -> PendingTasksResponse:
    ids = svc.worker.pending_tasks()
    return PendingTasksResponse(size=len(ids), tasks=ids)
