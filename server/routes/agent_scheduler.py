"""The sd-webui-agent-scheduler extension's API (ArtVentureX), for async clients: queue a txt2img or
img2img request and get its task id at once; the queue, a task's status, position and results (base64 with
infotexts, or a zip), history, delete / interrupt, requeue, move, bookmark, rename, pause and resume; the
extension's older route forms too (`/v1/delete/{id}`, `/v1/results/{id}`, ...). Tasks share the server's one
queue with synchronous requests (server/tasks.py); a task that is not found answers the extension's
`{"success": false, "message": "Task not found"}` with status 404."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import zipfile
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from pipeline.runtime.task_store import DONE, FAILED, INTERRUPTED, PENDING, RUNNING, TaskRow
from schemas.agent_scheduler import (
    HistoryResponse,
    Outcome,
    QueueImg2ImgRequest,
    QueueStatusResponse,
    QueueTaskResponse,
    QueueTxt2ImgRequest,
    TaskModel,
    UpdateTaskArgs,
)
from server.deps import services
from server.errors import NEVER_QUEUED, ErrorResponse
from server.services import Services
from server.tasks import AsyncTasks, split_body

router = APIRouter(prefix="/agent-scheduler/v1", tags=["async tasks"])

NOT_FOUND = {404: {"model": Outcome, "description": "no such task"}}
MIME = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}
_open_lock = asyncio.Lock()


async def tasks(request: Request) -> AsyncTasks:
    """The app's async tasks, opened at start-up (app lifespan) or on first use."""
    state = request.app.state
    if getattr(state, "tasks", None) is None:
        async with _open_lock:
            if getattr(state, "tasks", None) is None:
                state.tasks = await AsyncTasks.open(state.services)
    return state.tasks


def _missing() -> JSONResponse:
    return JSONResponse({"success": False, "message": "Task not found"}, status_code=404)


def _ok(message: str, data: Any = None) -> dict[str, Any]:
    return {"success": True, "message": message} if data is None else {"success": True, "data": data}


def _stamp(t: float, iso: bool) -> int | str:
    if iso:
        return datetime.fromtimestamp(t, timezone.utc).isoformat()
    return int(t * 1000)  # the extension's queue and history send epoch milliseconds


def _model(row: TaskRow, ts: AsyncTasks, iso: bool = False) -> TaskModel:
    params = {k: v for k, v in row.params.items()
              if k not in ("init_images", "mask", "alwayson_scripts", "script_args", "firstpass_image")}
    params["checkpoint"] = row.checkpoint
    info, position = ts.svc.worker.task(row.id)
    status = RUNNING if info is not None and info.status == "running" else row.status
    result = None
    if row.status == DONE:
        ext = _ext(ts)
        result = json.dumps({"images": [f"{row.id}-{i}.{ext}" for i in range(len(row.infotexts))],
                             "infotexts": row.infotexts, "expired": row.expired})
    elif row.error:
        result = row.error
    return TaskModel(id=row.id, api_task_callback=row.callback_url, name=row.name, type=row.type,
                     status=status, params=params, priority=int(row.priority * 1000),
                     position=position if status == PENDING else None, result=result,
                     bookmarked=row.bookmarked, created_at=_stamp(row.created_at, iso),
                     updated_at=_stamp(row.updated_at, iso))


def _ext(ts: AsyncTasks) -> str:
    fmt = str(ts.svc.options.get("samples_format") or "png").lower()
    return "jpg" if fmt == "jpeg" else fmt


# -- queueing ---------------------------------------------------------------------------------------------
async def _queue(kind: str, request: Request, ts: AsyncTasks) -> QueueTaskResponse:
    raw = await request.json()  # stored as sent, prepared again after a restart
    params, checkpoint, callback_url = split_body(raw)
    return QueueTaskResponse(task_id=await ts.submit(kind, params, checkpoint, callback_url))


@router.post("/queue/txt2img", response_model=QueueTaskResponse)
async def queue_txt2img(body: QueueTxt2ImgRequest, request: Request,
                        ts: AsyncTasks = Depends(tasks)) -> QueueTaskResponse:
    return await _queue("txt2img", request, ts)


@router.post("/queue/img2img", response_model=QueueTaskResponse, responses={
    404: {"model": ErrorResponse, "description": "`init_images` is missing or empty (A1111's answer)"}})
async def queue_img2img(body: QueueImg2ImgRequest, request: Request,
                        ts: AsyncTasks = Depends(tasks)) -> QueueTaskResponse:
    return await _queue("img2img", request, ts)


@router.get("/queue", response_model=QueueStatusResponse)
async def queue_status(limit: int = 20, offset: int = 0, ts: AsyncTasks = Depends(tasks),
                       svc: Services = Depends(services)) -> QueueStatusResponse:
    rows = {row.id: row for row in ts.store.pending()}
    order = [t for t in svc.worker.pending_tasks() if t in rows]
    running = svc.worker.running_task  # the oldest running one (several with --workers N)
    order = [t for t in svc.worker.running_tasks() if t in rows] + order
    order += [t for t in rows if t not in order]
    page = [_model(rows[t], ts) for t in order[max(offset, 0): max(offset, 0) + max(limit, 0)]]
    return QueueStatusResponse(current_task_id=running, pending_tasks=page, total_pending_tasks=len(order),
                               paused=svc.worker.paused)


@router.get("/history", response_model=HistoryResponse)
async def history(status: str | None = None, limit: int = Query(20, ge=0, le=1_000_000),
                  offset: int = Query(0, ge=0, le=1 << 62), ts: AsyncTasks = Depends(tasks)) -> HistoryResponse:
    ended = (DONE, FAILED, INTERRUPTED)
    statuses = (status,) if status in ended else ended
    rows, total = ts.store.history(statuses, limit, offset, bookmarked=status == "bookmarked")
    return HistoryResponse(tasks=[_model(r, ts) for r in rows], total=total)


@router.get("/task/{id}", responses=NOT_FOUND)
async def get_task(id: str, ts: AsyncTasks = Depends(tasks)) -> Any:
    row = ts.store.get(id)
    return _missing() if row is None else _ok("", _model(row, ts, iso=True).model_dump())


@router.get("/task/{id}/position", responses=NOT_FOUND)
async def task_position(id: str, ts: AsyncTasks = Depends(tasks)) -> Any:
    row = ts.store.get(id)
    if row is None:
        return _missing()
    model = _model(row, ts)
    return _ok("", {"status": model.status, "position": model.position})


RESULTS = {**NOT_FOUND,
           200: {"content": {"application/zip": {}}, "description": "JSON, or a zip with ?zip=true"}}


@router.get("/task/{id}/results", responses=RESULTS)
@router.get("/results/{id}", deprecated=True, responses=RESULTS)
async def task_results(id: str, as_zip: bool = Query(False, alias="zip", description="one zip of the images"),
                       ts: AsyncTasks = Depends(tasks)) -> Any:
    row = ts.store.get(id)
    if row is None:
        return _missing()
    if row.status != DONE:
        return {"success": False, "message": f"Task is {row.status}"}
    images = ts.store.images(id)
    if row.expired or len(images) != len(row.infotexts):
        return {"success": False, "message": "Task result is not available"}
    ext = _ext(ts)
    if as_zip:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for i, data in enumerate(images):
                z.writestr(f"{id}-{i}.{ext}", data)
        return Response(buf.getvalue(), media_type="application/zip",
                        headers={"Content-Disposition": f"attachment; filename=results-{id}.zip"})
    mime = MIME.get(ext, "image/png")
    return _ok("", [{"image": f"data:{mime};base64,{base64.b64encode(data).decode()}",
                     "infotext": row.infotexts[i]} for i, data in enumerate(images)])


# -- control ----------------------------------------------------------------------------------------------
@router.delete("/task/{id}", responses=NOT_FOUND, openapi_extra=NEVER_QUEUED)
@router.post("/delete/{id}", deprecated=True, responses=NOT_FOUND, openapi_extra=NEVER_QUEUED)
async def delete_task(id: str, ts: AsyncTasks = Depends(tasks)) -> Any:
    """A running task is interrupted (it ends as `interrupted`); any other is deleted (a waiting one never
    runs)."""
    if ts.svc.worker.interrupt_task(id):
        return _ok("Task interrupted")
    if not ts.store.delete(id):
        return _missing()
    ts.svc.worker.cancel_task(id)
    return _ok("Task deleted")


@router.put("/task/{id}", responses=NOT_FOUND)
async def update_task(id: str, body: UpdateTaskArgs, ts: AsyncTasks = Depends(tasks)) -> Any:
    """Rename a task, or change a queued task's request (`params`, merged into it) or `checkpoint`: checked
    as a new request (a 4xx when now bad) and kept in its place in the queue."""
    row = ts.store.get(id)
    if row is None:
        return _missing()
    if body.params is not None or body.checkpoint is not None:
        problem = await ts.update(row, body.params, body.checkpoint)
        if problem:
            return {"success": False, "message": problem}
    if body.name is not None:
        ts.store.update(id, name=body.name)
    return _ok("Task updated.")


@router.post("/task/{id}/interrupt", responses=NOT_FOUND, openapi_extra=NEVER_QUEUED)
async def interrupt_task(id: str, ts: AsyncTasks = Depends(tasks)) -> Any:
    if ts.store.get(id) is None:
        return _missing()
    if ts.svc.worker.interrupt_task(id) or ts.svc.worker.cancel_task(id):
        return _ok("Task interrupted")
    return {"success": False, "message": "Task is not running or queued"}


@router.post("/task/{id}/run", responses=NOT_FOUND, openapi_extra=NEVER_QUEUED)
@router.post("/run/{id}", deprecated=True, responses=NOT_FOUND, openapi_extra=NEVER_QUEUED)
async def run_task(id: str, ts: AsyncTasks = Depends(tasks)) -> Any:
    """Run a waiting task next (the extension starts it at once when nothing runs; here the worker does)."""
    if ts.store.get(id) is None:
        return _missing()
    if ts.svc.worker.is_running(id):
        return {"success": False, "message": "Task is running"}
    pending = ts.svc.worker.pending_tasks()
    if id not in pending:
        return {"success": False, "message": "Task is not queued"}
    if pending[0] != id:
        ts.svc.worker.move_task(id, pending[0])
    ts.order_changed()
    return _ok("Task is scheduled to run next")


@router.post("/task/{id}/move/{over_id}", responses=NOT_FOUND, openapi_extra=NEVER_QUEUED)
@router.post("/move/{id}/{over_id}", deprecated=True, responses=NOT_FOUND, openapi_extra=NEVER_QUEUED)
async def move_task(id: str, over_id: str, ts: AsyncTasks = Depends(tasks)) -> Any:
    """Move a waiting task to `top`, `bottom`, or to the place of the waiting task `over_id`."""
    worker = ts.svc.worker
    if ts.store.get(id) is None or (over_id not in ("top", "bottom") and ts.store.get(over_id) is None):
        return _missing()
    pending = worker.pending_tasks()
    if id not in pending or (over_id not in ("top", "bottom") and over_id not in pending):
        return {"success": False, "message": "Both tasks must be queued"}
    if over_id == "top":
        moved = pending[0] == id or worker.move_task(id, pending[0])
    elif over_id == "bottom":
        moved = worker.move_task(id, None)
    else:  # to the other task's place: before it when moving up, after it when moving down
        at = pending.index(over_id)
        if pending.index(id) < at:  # down: after the other task
            moved = worker.move_task(id, pending[at + 1] if at + 1 < len(pending) else None)
        else:
            moved = worker.move_task(id, over_id)
    ts.order_changed()
    return _ok("Task moved") if moved else {"success": False, "message": "Task is not queued"}


@router.post("/task/{id}/requeue", responses=NOT_FOUND)
@router.post("/requeue/{id}", deprecated=True, responses=NOT_FOUND)
async def requeue_task(id: str, ts: AsyncTasks = Depends(tasks)) -> Any:
    """A copy of the task (a new id) queued at the end."""
    row = ts.store.get(id)
    if row is None:
        return _missing()
    return {"success": True, "message": "Task requeued", "task_id": await ts.requeue(row)}


@router.post("/task/requeue-failed")
async def requeue_failed(ts: AsyncTasks = Depends(tasks)) -> Any:
    """Every failed task queued again under its own id."""
    rows, _ = ts.store.history((FAILED,), 10_000, 0)
    if not rows:
        return {"success": False, "message": "No failed tasks"}
    done = 0
    for row in reversed(rows):  # oldest first
        done += await ts.requeue_failed(row)
    return _ok(f"Requeued {done} failed tasks")


async def _set(id: str, ts: AsyncTasks, message: str, **fields: Any) -> Any:
    if ts.store.get(id) is None:
        return _missing()
    ts.store.update(id, **fields)
    return _ok(message)


@router.post("/task/{id}/bookmark", responses=NOT_FOUND, openapi_extra=NEVER_QUEUED)
@router.post("/bookmark/{id}", deprecated=True, responses=NOT_FOUND, openapi_extra=NEVER_QUEUED)
async def bookmark(id: str, ts: AsyncTasks = Depends(tasks)) -> Any:
    return await _set(id, ts, "Task bookmarked", bookmarked=1)


@router.post("/task/{id}/unbookmark", responses=NOT_FOUND, openapi_extra=NEVER_QUEUED)
@router.post("/unbookmark/{id}", deprecated=True, responses=NOT_FOUND, openapi_extra=NEVER_QUEUED)
async def unbookmark(id: str, ts: AsyncTasks = Depends(tasks)) -> Any:
    return await _set(id, ts, "Task unbookmarked", bookmarked=0)


@router.post("/task/{id}/rename", responses=NOT_FOUND, openapi_extra=NEVER_QUEUED)
@router.post("/rename/{id}", deprecated=True, responses=NOT_FOUND, openapi_extra=NEVER_QUEUED)
async def rename(id: str, name: str, ts: AsyncTasks = Depends(tasks)) -> Any:
    return await _set(id, ts, "Task renamed.", name=name)


@router.post("/queue/pause", openapi_extra=NEVER_QUEUED)
@router.post("/pause", deprecated=True, openapi_extra=NEVER_QUEUED)
async def pause(ts: AsyncTasks = Depends(tasks)) -> Any:
    """Hold back the async tasks (synchronous requests still run); the running one finishes."""
    ts.set_paused(True)
    return _ok("Queue paused.")


@router.post("/queue/resume", openapi_extra=NEVER_QUEUED)
@router.post("/resume", deprecated=True, openapi_extra=NEVER_QUEUED)
async def resume(ts: AsyncTasks = Depends(tasks)) -> Any:
    ts.set_paused(False)
    return _ok("Queue resumed.")


@router.post("/queue/clear", openapi_extra=NEVER_QUEUED)
async def clear_queue(ts: AsyncTasks = Depends(tasks)) -> Any:
    """Delete every waiting task (the running one runs on)."""
    for row in ts.store.pending():
        if not ts.svc.worker.is_running(row.id):
            ts.store.delete(row.id)
            ts.svc.worker.cancel_task(row.id)
    return _ok("Queue cleared.")


@router.post("/history/clear", openapi_extra=NEVER_QUEUED)
async def clear_history(ts: AsyncTasks = Depends(tasks)) -> Any:
    ts.store.delete_status((DONE, FAILED, INTERRUPTED))
    return _ok("History cleared.")
