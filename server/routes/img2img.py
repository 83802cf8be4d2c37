"""POST /sdapi/v1/img2img: images decoded and the request validated before it is queued, then the same
queue, leniency and response shape as txt2img."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from pipeline.jobs.builtin_scripts import extra_options_overrides
from pipeline.jobs.dispatch import prepare_img2img
from schemas.img2img import ImageToImageResponse, Img2ImgRequest
from server.deps import PreparedJob, json_response, run_generation, services, url_fetch
from server.errors import ErrorResponse
from server.filenames import FilenameGenerator, JobFacts
from server.imagecodec import decode_image
from server.infotext_request import apply_infotext
from server.limits import check_work_limits
from server.saving import save_image
from server.services import Services

router = APIRouter(prefix="/sdapi/v1", tags=["generation"])


async def prepare_img2img_request(svc: Services, req: Img2ImgRequest) -> PreparedJob:
    """Limits, options + override_settings, the images decoded (off the event loop) and the job: every 4xx
    before queueing. The `infotext` field is applied first."""
    req = apply_infotext(svc, req, "img2img")
    if not req.init_images:  # A1111's answer, checked first
        raise HTTPException(404, "Init image not found")
    check_work_limits(svc.config, steps=req.steps, n_iter=req.n_iter, batch_size=req.batch_size)
    req.override_settings = extra_options_overrides(req.alwayson_scripts, svc.options.all(), True,
                                                    req.override_settings)  # A1111's "Extra options" entry
    opts = svc.options.effective(req.override_settings)
    limit = svc.config.max_pixels
    script_args = svc.extensions.script_args(req.alwayson_scripts)  # an unknown script is A1111's 422
    fetch = url_fetch(svc, opts)  # image URLs: A1111's api_* options, override_settings included

    def decode() -> tuple[list[Any], Any]:
        images = [decode_image(data, field=f"init_images[{i}]", max_pixels=limit, fetch=fetch)
                  for i, data in enumerate(req.init_images or [])]
        mask = decode_image(req.mask, field="mask", max_pixels=limit, fetch=fetch) if req.mask else None
        return images, mask

    init_images, mask = await run_in_threadpool(decode)
    p = prepare_img2img(req, opts, svc.models, svc.upscalers, limit, init_images, mask)
    if opts.get("save_init_img"):  # A1111 saves them as the job starts, whether or not it saves its results
        p.init_img_hash = await run_in_threadpool(save_init_images, svc, init_images, opts)
    # A1111 saves img2img results under outdir_img2img_samples (outdir_samples first, when set)
    where = {**opts, "outdir_txt2img_samples": opts.get("outdir_img2img_samples") or "img2img-images",
             "outdir_txt2img_grids": opts.get("outdir_img2img_grids") or "img2img-grids"}
    return PreparedJob("img2img", req, p, script_args, opts, where)


def save_init_images(svc: Services, images: list[Any], opts: dict[str, Any]) -> str | None:
    """A1111's option save_init_img: each init image as sent, as `<md5 of its pixels>.png` in
    `outdir_init_images` (relative: under --outputs-dir); returns the last hash (infotext `Init image
    hash`)."""
    root = Path(opts.get("outdir_init_images") or "init-images")
    if not root.is_absolute():
        root = svc.config.outputs_dir / root
    digest = None
    for img in images:
        digest = hashlib.md5(img.tobytes()).hexdigest()
        namegen = FilenameGenerator(JobFacts(), None, None, img)
        save_image(root, img, "png", opts, namegen, svc.encoder(opts, None), forced_filename=digest)
    return digest


@router.post("/img2img", response_model=ImageToImageResponse, responses={
    404: {"model": ErrorResponse, "description": "`init_images` is missing or empty (A1111's answer)"}})
async def img2img(req: Img2ImgRequest, request: Request,
                  svc: Services = Depends(services)) -> Response:
    job = await prepare_img2img_request(svc, req)
    result, images = await run_generation(svc, request, job)
    params = job.req.model_dump()
    if not req.include_init_images:
        params["init_images"] = None
        params["mask"] = None
    return json_response(ImageToImageResponse(images=images, parameters=params, info=json.dumps(result.info)))
