"""POST /sdapi/v1/txt2img and POST /sdapi/v1/png-info."""
from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from pipeline.infotext.codec import parse_infotext
from pipeline.jobs.builtin_scripts import extra_options_overrides
from pipeline.jobs.dispatch import prepare_txt2img
from schemas.txt2img import TextToImageResponse, Txt2ImgRequest
from server.deps import PreparedJob, json_response, run_generation, services, url_fetch
from server.errors import NEVER_QUEUED
from server.imagecodec import decode_image, read_image_info
from server.infotext_request import apply_infotext
from server.limits import check_work_limits
from server.services import Services

router = APIRouter(prefix="/sdapi/v1", tags=["generation"])


async def prepare_txt2img_request(svc: Services, req: Txt2ImgRequest) -> PreparedJob:
    """The `infotext` field applied, limits, options + override_settings, the first-pass image (decoded, or
    fetched, off the event loop) and the job: every 4xx before queueing."""
    req = apply_infotext(svc, req, "txt2img")
    hires = req.enable_hr or bool(req.firstpass_image)
    check_work_limits(svc.config, steps=req.steps, n_iter=req.n_iter, batch_size=req.batch_size,
                      hr_steps=(req.hr_second_pass_steps or req.steps) if hires else None)
    req.override_settings = extra_options_overrides(req.alwayson_scripts, svc.options.all(), False,
                                                    req.override_settings)  # A1111's "Extra options" entry
    opts = svc.options.effective(req.override_settings)
    script_args = svc.extensions.script_args(req.alwayson_scripts)  # an unknown script is A1111's 422
    firstpass = None
    if req.firstpass_image:
        fetch = url_fetch(svc, opts)
        firstpass = await run_in_threadpool(decode_image, req.firstpass_image, field="firstpass_image",
                                            max_pixels=svc.config.max_pixels, fetch=fetch)
    p = prepare_txt2img(req, opts, svc.models, svc.upscalers, svc.config.max_pixels, firstpass)
    return PreparedJob("txt2img", req, p, script_args, opts, save_options=opts)


@router.post("/txt2img", response_model=TextToImageResponse)
async def txt2img(req: Txt2ImgRequest, request: Request, svc: Services = Depends(services)) -> Response:
    job = await prepare_txt2img_request(svc, req)
    result, images = await run_generation(svc, request, job)
    return json_response(TextToImageResponse(images=images, parameters=job.req.model_dump(),
                                             info=json.dumps(result.info)))


class PNGInfoRequest(BaseModel):
    image: str = Field(min_length=1, description="a PNG/JPEG/WebP as base64, bare or as a data: URL, "
                                                 "or an http(s) URL")


class PNGInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


@router.post("/png-info", response_model=PNGInfoResponse, openapi_extra=NEVER_QUEUED)
async def png_info(req: PNGInfoRequest, svc: Services = Depends(services)) -> PNGInfoResponse:
    def read() -> PNGInfoResponse:
        img = decode_image(req.image, field="image", max_pixels=svc.config.max_pixels,
                           fetch=url_fetch(svc, svc.options.all()))
        info, items = read_image_info(img)
        backcompat = bool(svc.options.get("auto_backcompat"))
        return PNGInfoResponse(info=info, items=items,
                               parameters=parse_infotext(info, backcompat=backcompat) if info else {})

    return await run_in_threadpool(read)
