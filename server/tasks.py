"""Async tasks (the agent-scheduler extension's model): a txt2img or img2img request queued with a task id
answered at once, run later on the same worker, in the same queue and order as synchronous requests, its
result kept in the task store (pipeline/runtime/task_store.py) and its `callback_url` called when it ends.

A task is prepared exactly as the synchronous route prepares its request (every 4xx before it is queued)
and runs the same job (`server/deps.py generation_job`), so its images are the same bytes. The store is
written before the worker hears of a task, so a task acknowledged is never lost: at start-up the pending
tasks are prepared again from their JSON and queued in their order; a task that was running when the
process died is queued again once (it then counts two starts) and reported failed the second time."""
from __future__ import annotations

import base64
import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from pipeline.runtime.errors import PipelineError
from pipeline.runtime.registry import INTERRUPTED as REG_INTERRUPTED
from pipeline.runtime.registry import new_task_id
from pipeline.runtime.task_store import DONE, FAILED, INTERRUPTED, PENDING, RUNNING, TaskRow, TaskStore
from pipeline.runtime.worker import Job, WorkerStopped
from schemas.img2img import Img2ImgRequest
from schemas.txt2img import Txt2ImgRequest
from server.deps import GenerationCall, PreparedJob, check_generation, finish_generation, generation_job
from server.imagecodec import ImageDecodeError
from server.routes.generation import prepare_txt2img_request
from server.routes.img2img import prepare_img2img_request
from server.services import Services
from server.webhook import post_result
from upscalers.errors import UpscalerError

log = logging.getLogger("hiresd.tasks")

KINDS = ("txt2img", "img2img")
MAX_STARTS = 2  # a task whose run was cut by the process dying twice is reported failed, not run again

# what preparing a request raises for a bad request (each a 4xx over HTTP)
REFUSED = (HTTPException, RequestValidationError, PipelineError, ImageDecodeError, UpscalerError)


def _why(exc: Exception) -> str:
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    if isinstance(exc, RequestValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return str(exc)


def split_body(body: dict[str, Any]) -> tuple[dict[str, Any], str | None, str | None]:
    """An agent-scheduler body as the A1111 request to store and its `checkpoint` and `callback_url`: the
    checkpoint and `vae` become the job's `override_settings` (sd_model_checkpoint, sd_vae), restored
    afterwards, as the extension switches the model for the task only."""
    params = dict(body)
    checkpoint, vae, callback_url = (params.pop(k, None) for k in ("checkpoint", "vae", "callback_url"))
    overrides = dict(params.get("override_settings") or {})
    if checkpoint:
        overrides["sd_model_checkpoint"] = checkpoint
    if vae:
        overrides["sd_vae"] = vae
    if overrides:
        params["override_settings"] = overrides
    return params, checkpoint, callback_url


class AsyncTasks:
    def __init__(self, svc: Services, store: TaskStore) -> None:
        self.svc = svc
        self.store = store
        self._ends = ThreadPoolExecutor(1, thread_name_prefix="hiresd-task-end")  # encode, store, callback
        self._hooks = ThreadPoolExecutor(2, thread_name_prefix="hiresd-webhook")
        self._current: dict[str, Job] = {}  # task id -> its job on the worker
        self._replaced: set[Job] = set()  # jobs cancelled by an update: they end silently
        self._announcing: set[str] = set()  # tasks whose callback is under way

    @classmethod
    async def open(cls, svc: Services) -> AsyncTasks:
        cfg = svc.config
        store = TaskStore(cfg.data_dir / "tasks.db", max_results=cfg.task_results_max,
                          max_result_bytes=cfg.task_results_max_mb << 20)
        tasks = cls(svc, store)
        svc.worker.pause(store.setting("paused") == "1")  # a paused queue stays paused across a restart
        await tasks.restore()
        return tasks

    def close(self) -> None:
        self._ends.shutdown(wait=True)
        self._hooks.shutdown(wait=True)
        self.store.close()

    # -- queueing -----------------------------------------------------------------------------------
    async def prepare(self, kind: str, params: dict[str, Any]) -> PreparedJob:
        """The request as the synchronous route prepares it (its images always sent back to the store)."""
        params = {**params, "send_images": True}
        try:
            req = (Txt2ImgRequest if kind == "txt2img" else Img2ImgRequest).model_validate(params)
        except ValidationError as exc:  # FastAPI's 422, as for the body of a request
            raise RequestValidationError(exc.errors(include_url=False)) from None
        if kind == "txt2img":
            job = await prepare_txt2img_request(self.svc, req)
        else:
            job = await prepare_img2img_request(self.svc, req)
        await run_in_threadpool(check_generation, self.svc, job.req, job.p, job.script_args)
        return job

    async def submit(self, kind: str, params: dict[str, Any], checkpoint: str | None = None,
                     callback_url: str | None = None, name: str | None = None) -> str:
        """Prepare and queue one task; its id. A bad request is a 4xx here and nothing is stored."""
        job = await self.prepare(kind, params)
        task_id = new_task_id()
        self.store.add(task_id, kind, params, checkpoint, callback_url, name)
        try:
            self._queue(task_id, job)
        except BaseException:
            self.store.delete(task_id)
            raise
        return task_id

    def _queue(self, task_id: str, job: PreparedJob, force: bool = False) -> None:
        def start() -> None:
            self.store.set_status(task_id, RUNNING, started=True)

        queued = self.svc.worker.submit(job.name, generation_job(self.svc, job.p), task_id=task_id,
                                        pausable=True, force=force, remote=GenerationCall(job.p), on_start=start)
        self._current[task_id] = queued
        queued.future.add_done_callback(lambda f: self._ends.submit(self._end, task_id, job, queued))

    def set_paused(self, paused: bool) -> None:
        self.svc.worker.pause(paused)
        self.store.set_setting("paused", "1" if paused else "0")

    async def update(self, row: TaskRow, params: dict[str, Any] | None, checkpoint: str | None) -> str | None:
        """Change a waiting task's request (`params` merged into it) or checkpoint: prepared again (a 4xx
        when it is now bad), and queued in the same place. None, or why it could not be changed."""
        worker = self.svc.worker
        if worker.is_running(row.id) or row.id not in worker.pending_tasks():
            now = RUNNING if worker.is_running(row.id) else row.status
            return f"Task is {now}; only a queued task changes"
        merged, _, _ = split_body({**row.params, **(params or {})})
        checkpoint = checkpoint if checkpoint is not None else row.checkpoint
        if checkpoint:
            merged["override_settings"] = {**(merged.get("override_settings") or {}),
                                           "sd_model_checkpoint": checkpoint}
        job = await self.prepare(row.type, merged)
        pending = worker.pending_tasks()
        after = pending[pending.index(row.id) + 1] if pending.index(row.id) + 1 < len(pending) else None
        old = self._current.get(row.id)
        if old is not None:
            self._replaced.add(old)
        if not worker.cancel_task(row.id):
            self._replaced.discard(old)
            return "Task is running"  # it started meanwhile
        self.store.update(row.id, params=merged, checkpoint=checkpoint)
        self._queue(row.id, job, force=True)
        if after is not None:
            worker.move_task(row.id, after)
        return None

    async def requeue(self, row: TaskRow) -> str:
        """A copy of a stored task queued at the end (the extension's requeue); the copy's id."""
        return await self.submit(row.type, row.params, row.checkpoint, row.callback_url,
                                 f"Copy of {row.name}" if row.name else None)

    async def requeue_failed(self, row: TaskRow) -> bool:
        """A failed task queued again at the end under its own id; False when it still cannot be prepared."""
        try:
            job = await self.prepare(row.type, row.params)
        except REFUSED:
            return False
        self.store.delete(row.id)
        self.store.add(row.id, row.type, row.params, row.checkpoint, row.callback_url, row.name)
        try:
            self._queue(row.id, job)
        except BaseException:
            self.store.finish(row.id, FAILED, [], [], None, row.error)
            raise
        return True

    def order_changed(self) -> None:
        """Write the worker's order of the waiting async tasks back to the store (after a move)."""
        mine = {row.id for row in self.store.pending()}
        self.store.set_order([t for t in self.svc.worker.pending_tasks() if t in mine])

    # -- the end of a task (on the task-end thread) -------------------------------------------------
    def _end(self, task_id: str, job: PreparedJob, queued: Job) -> None:
        if queued.future.cancelled() and queued in self._replaced:
            self._replaced.discard(queued)
            return  # replaced by an update: the new job ends the task
        if self._current.get(task_id) is queued:
            del self._current[task_id]
        try:
            self._end_task(task_id, job, queued.future)
        except Exception:  # noqa: BLE001 - a task's end must never go unrecorded
            log.exception("task %s: storing its end failed", task_id)
            self.store.set_status(task_id, FAILED, "storing the result failed; see the server log")

    def _end_task(self, task_id: str, job: PreparedJob, future: Future) -> None:
        if future.cancelled():  # dropped while it waited: deleted, or cancelled by id
            if self.store.get(task_id) is not None:
                self.store.finish(task_id, INTERRUPTED, [], [], None, "cancelled before it ran")
                self._callback(task_id)
            return
        exc = future.exception()
        if isinstance(exc, WorkerStopped):  # the server is stopping: the task stays queued for the next start
            self.store.set_status(task_id, PENDING)
            return
        if exc is not None:
            self.store.finish(task_id, FAILED, [], [], None, str(exc) or type(exc).__name__)
            self._callback(task_id)
            return
        result, incomplete = future.result()
        images = finish_generation(self.svc, job.req, result, incomplete, job.opts, job.save_options)
        info = self.svc.worker.registry.get(task_id)
        status = INTERRUPTED if info is not None and info.status == REG_INTERRUPTED else DONE
        self.store.finish(task_id, status, [base64.b64decode(b) for b in images], list(result.infotexts),
                          json.dumps(result.info))
        self._callback(task_id)

    def _callback(self, task_id: str) -> None:
        row = self.store.get(task_id)
        if row is None or not row.callback_url or row.callback_done or task_id in self._announcing:
            return
        self._announcing.add(task_id)
        fmt = str(self.svc.options.get("samples_format") or "png")
        images = self.store.images(task_id) if row.status == DONE else []

        def call() -> None:
            try:
                post_result(row.callback_url, task_id, row.status, images, fmt)
                self.store.update(task_id, callback_done=1)
            finally:
                self._announcing.discard(task_id)

        self._hooks.submit(call)

    # -- start-up -----------------------------------------------------------------------------------
    async def restore(self) -> None:
        """Queue the stored pending tasks again, in their order; a task that was running when the process
        died runs once more, or is reported failed when it had started twice already."""
        for row in self.store.pending():
            if row.status == RUNNING and row.attempts >= MAX_STARTS:
                log.warning("task %s was running when the server stopped, the second time: failed", row.id)
                self.store.finish(row.id, FAILED, [], [], None,
                                  "the server stopped while this task ran, twice; it is not run again")
                self._callback(row.id)
                continue
            if row.status == RUNNING:
                log.warning("task %s was running when the server stopped: queued again", row.id)
            try:
                job = await self.prepare(row.type, row.params)
            except REFUSED as exc:
                detail = _why(exc)
                log.warning("task %s cannot run after the restart: %s", row.id, detail)
                self.store.finish(row.id, FAILED, [], [], None, f"after a restart: {detail}")
                self._callback(row.id)
                continue
            self.store.set_status(row.id, PENDING)
            self._queue(row.id, job, force=True)
        for row in self.store.unannounced():  # ended, but the process died before its callback went out
            self._callback(row.id)
