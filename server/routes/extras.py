"""POST /sdapi/v1/extra-single-image and /extra-batch-images: standalone upscaling (no diffusion model).

Images are decoded and every name, size and budget is checked before the job is queued; the job then
runs on the one worker (shared with txt2img), reporting progress per image and per tile. An interrupt
stops the running image and returns the ones finished before it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from schemas.extras import (
    ExtrasBaseRequest,
    ExtrasBatchImagesRequest,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
)
from server.deps import json_response, run_on_worker, services, url_fetch
from server.imagecodec import decode_image, encode_images_b64
from server.services import Services
from upscalers.errors import Interrupted
from upscalers.extras import ExtrasParams, check_extras, html_info, operation_order, run_extras
from upscalers.ldsr import LdsrOptions

router = APIRouter(prefix="/sdapi/v1", tags=["extras"])


@dataclass
class ExtrasCall:
    """An Extras job with the options it runs under; picklable, so that a worker replica runs it when the
    server is scaled out (server/cluster/)."""
    images: list[Image.Image]
    req: ExtrasBaseRequest
    opts: dict[str, Any]
    model_key = ""  # any replica: upscaler files are loaded where the job runs

    def run(self, svc: Services) -> tuple[list[Image.Image], str]:
        return _run(svc, self.images, self.req, self.opts)


def _run(svc: Services, images: list[Image.Image], req: ExtrasBaseRequest,
         opts: dict[str, Any]) -> tuple[list[Image.Image], str]:
    """On the worker: one image at a time, so that an interrupt keeps the finished ones."""
    params = ExtrasParams.from_mapping(req.model_dump())
    state = svc.worker.state
    state.begin("extras", len(images))
    out: list[Image.Image] = []
    infotext = ""
    for i, image in enumerate(images):
        state.set_job(i, "extras")
        try:
            done, infotext = run_extras(
                [image], params, svc.upscalers, tile_options=opts,
                max_pixels=svc.config.max_pixels, should_stop=lambda: state.interrupted,
                on_tile=lambda d, t: state.set_step(d, t),
                ldsr=LdsrOptions(steps=opts["ldsr_steps"], cached=opts["ldsr_cached"]),
                cache=(svc.extras_cache, int(opts["upscaling_max_images_in_cache"])),
                operations=operation_order(opts))
        except Interrupted:
            break
        out += done
    return out, infotext


async def _extras(svc: Services, request: Request, datas: list[tuple[str, str]], req: ExtrasBaseRequest
                  ) -> tuple[list[str], str]:
    fetch = url_fetch(svc, svc.options.all())

    def decode() -> list[Image.Image]:
        return [decode_image(d, field=f, max_pixels=svc.config.max_pixels, fetch=fetch) for f, d in datas]

    images = await run_in_threadpool(decode)
    opts = svc.options.all()
    check_extras(images, ExtrasParams.from_mapping(req.model_dump()), svc.upscalers,
                 max_pixels=svc.config.max_pixels, operations=operation_order(opts))
    call = ExtrasCall(images, req, opts)
    results, infotext = await run_on_worker(svc, request, "extras", lambda: call.run(svc), remote=call)
    fmt = svc.options.get("samples_format")

    def encode() -> list[str]:
        return encode_images_b64(results, fmt, compress_level=svc.config.png_compress_level,
                                 jpeg_quality=svc.options.get("jpeg_quality"),
                                 webp_lossless=bool(svc.options.get("webp_lossless")),
                                 text_chunks=[{k: v for k, v in img.info.items() if isinstance(v, str)}
                                              for img in results])

    return await run_in_threadpool(encode), html_info(infotext)


@router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
async def extra_single_image(req: ExtrasSingleImageRequest, request: Request,
                             svc: Services = Depends(services)) -> Response:
    images, info = await _extras(svc, request, [("image", req.image)], req)
    return json_response(ExtrasSingleImageResponse(html_info=info, image=images[0] if images else ""))


@router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
async def extra_batch_images(req: ExtrasBatchImagesRequest, request: Request,
                             svc: Services = Depends(services)) -> Response:
    datas = [(f"imageList[{i}]", item.data) for i, item in enumerate(req.imageList)]
    images, info = await _extras(svc, request, datas, req)
    return json_response(ExtrasBatchImagesResponse(html_info=info, images=images))
