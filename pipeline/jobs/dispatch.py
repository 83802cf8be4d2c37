"""The one way into a job on the pipeline side: every endpoint prepares its job here before it is queued,
and the worker runs every job kind through `run_job`.

- `prepare_txt2img` / `prepare_img2img`: resolve and validate a request (names, sizes, script arguments)
  into its processing object `p`; a bad request fails here, before any model work.
- `run_job(p, ctx)`: txt2img (with hires fix), img2img, or the selectable script the img2img request named."""
from __future__ import annotations

from typing import Any

from PIL import Image

from pipeline.jobs import controlnet, scripts
from pipeline.jobs.common import JobContext, JobResult
from pipeline.jobs.img2img.prepare import Img2ImgProcessing
from pipeline.jobs.img2img.prepare import prepare_img2img as prepare_img2img_request
from pipeline.jobs.img2img.run import run_img2img
from pipeline.jobs.processing import ModelNames, Processing
from pipeline.jobs.processing import prepare as prepare_txt2img
from pipeline.jobs.txt2img import run_txt2img
from schemas.img2img import Img2ImgRequest
from upscalers.registry import UpscalerRegistry

__all__ = ["prepare_img2img", "prepare_txt2img", "run_job"]


def prepare_img2img(req: Img2ImgRequest, options: dict[str, Any], models: ModelNames, upscalers: UpscalerRegistry,
                    max_pixels: int, init_images: list[Image.Image], mask: Image.Image | None
                    ) -> Img2ImgProcessing:
    """An img2img request with decoded images, its selectable script (`script_name`) attached."""
    def attach(p: Img2ImgProcessing) -> None:
        scripts.attach(p, req, upscalers, init_images[0].width, init_images[0].height, max_pixels)

    return prepare_img2img_request(req, options, models, upscalers, max_pixels, init_images, mask,
                                   scripts=scripts.NAMES, attach_script=attach)


def run_job(p: Processing, ctx: JobContext) -> JobResult:
    """Run a prepared job of any kind on the worker."""
    if isinstance(p, Img2ImgProcessing):
        if p.script is not None:  # the extension appends no detected maps to upscale scripts' results
            return p.script.run(p, ctx)
        result = run_img2img(p, ctx)
    else:
        result = run_txt2img(p, ctx)
    result.images += controlnet.detected_maps(p.controlnet)  # ControlNet's maps, after the results
    return result
