"""Progress, interrupt and skip: answered at once, never queued behind a job.

`/interrupt` and `/skip` without an id act on the job running now, as A1111's do; with an `id_task` (query
parameter or JSON body: the job's `force_task_id` or async task id) on that job only: a running job is
interrupted or skipped, a waiting one is dropped (interrupt) and never runs, an ended one is left alone,
an unknown id is a 404."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field
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
    snap = svc.worker.progress_state().snapshot()
    image = None
    if not skip_current_image and snap["preview"] is not None:
        fmt = svc.options.get("samples_format")
        image = await run_in_threadpool(lambda: encode_image_b64(snap["preview"](), fmt))
    return ProgressResponse(progress=snap["progress"], eta_relative=snap["eta_relative"], state=snap["state"],
                            current_image=image, textinfo=snap["textinfo"])


class TaskRef(BaseModel):
    id_task: str | None = Field(None, description="the job to act on (its force_task_id or task id); "
                                                  "none: the job running now")


def _task_id(query: str | None, body: TaskRef | None, svc: Services) -> str | None:
    task_id = query or (body.id_task if body is not None else None)
    if task_id is not None and svc.worker.task(task_id)[0] is None:
        raise HTTPException(404, f"id_task: no job {task_id!r} is queued, running or recently finished")
    return task_id


ID_TASK = Query(None, description="the job to act on (its force_task_id or task id); none: the job "
                                  "running now")
NOT_FOUND = {404: {"description": "`id_task` names no queued, running or recently finished job"}}


@router.post("/interrupt", openapi_extra=NEVER_QUEUED, responses=NOT_FOUND)
async def interrupt(body: TaskRef | None = None, id_task: str | None = ID_TASK,
                    svc: Services = Depends(services)) -> dict[str, Any]:
    task_id = _task_id(id_task, body, svc)
    if task_id is None:
        svc.worker.interrupt_all()
    elif not svc.worker.interrupt_task(task_id):
        svc.worker.cancel_task(task_id)  # waiting: dropped, never run; ended: nothing to do
    return {}


@router.post("/skip", openapi_extra=NEVER_QUEUED, responses=NOT_FOUND)
async def skip(body: TaskRef | None = None, id_task: str | None = ID_TASK,
               svc: Services = Depends(services)) -> None:
    task_id = _task_id(id_task, body, svc)
    if task_id is None:
        svc.worker.skip_all()
    else:
        svc.worker.skip_task(task_id)  # only a running job has a batch to skip
    return None
