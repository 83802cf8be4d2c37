"""Request and response models of the sd-webui-agent-scheduler extension's API (ArtVentureX), which async
clients speak: a txt2img/img2img request plus `checkpoint`, `vae` and `callback_url`; the task, queue and
history shapes with the extension's field names."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from schemas.img2img import Img2ImgRequest
from schemas.txt2img import Txt2ImgRequest

URL_PATTERN = r"^https?://\S+$"


class AsyncTaskFields(BaseModel):
    checkpoint: str | None = Field(None, description="the checkpoint for this task only (a title, name or "
                                                     "hash, as sd_model_checkpoint); none: the current one")
    vae: str | None = Field(None, description="the VAE for this task only (as sd_vae); none: the current one")
    callback_url: str | None = Field(None, pattern=URL_PATTERN,
                                     description="http(s) URL POSTed once when the task ends (multipart: "
                                                 "task_id, status, files)")


class QueueTxt2ImgRequest(Txt2ImgRequest, AsyncTaskFields):
    pass


class QueueImg2ImgRequest(Img2ImgRequest, AsyncTaskFields):
    pass


class QueueTaskResponse(BaseModel):
    task_id: str


class TaskModel(BaseModel):
    id: str
    api_task_id: str | None = None
    api_task_callback: str | None = None
    name: str | None = None
    type: str = Field(description="txt2img or img2img")
    status: str = Field(description="pending, running, done, failed or interrupted")
    params: dict[str, Any] = Field(description="the request (without its images), plus `checkpoint`")
    priority: int | None = None
    position: int | None = Field(None, description="place in the server's one queue (0: next), while pending")
    result: str | None = Field(None, description="JSON: images (names), infotexts; or the error of a failed "
                                                 "task")
    bookmarked: bool | None = None
    created_at: int | str | None = None
    updated_at: int | str | None = None


class QueueStatusResponse(BaseModel):
    current_task_id: str | None
    pending_tasks: list[TaskModel]
    total_pending_tasks: int
    paused: bool


class HistoryResponse(BaseModel):
    tasks: list[TaskModel]
    total: int


class TaskResult(BaseModel):
    image: str = Field(description="the image as a data: URL, the same bytes as the synchronous route sends")
    infotext: str


class Outcome(BaseModel):
    success: bool
    message: str | None = None
    data: Any = None


class UpdateTaskArgs(BaseModel):
    name: str | None = None
    checkpoint: str | None = None
    params: dict[str, Any] | None = Field(None, description="request fields to change (merged into the "
                                                            "task's)")
