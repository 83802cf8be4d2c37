"""An img2img request, validated and resolved before it is queued: `Img2ImgProcessing` is the `p` that
extension hooks receive (A1111's img2img processing object, in our shape)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from pipeline.diffusion.tiled.request import keeps_input_size
from pipeline.jobs.hires_size import first_pass_size
from pipeline.jobs.pixel_upscale import resolve_hires_upscaler
from pipeline.jobs.processing import (
    ModelNames,
    Processing,
    check_pixel_budget,
    check_seed_resize,
    prepare_common,
)
from pipeline.runtime.errors import InvalidRequest
from schemas.img2img import Img2ImgRequest
from upscalers.registry import UpscalerRegistry

MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
MIN_SIDE = 8


@dataclass
class Img2ImgProcessing(Processing):
    """A txt2img `Processing` plus img2img's inputs (decoded images) and settings."""

    init_images: list[Image.Image] = field(default_factory=list)
    mask: Image.Image | None = None  # as sent, already the init images' size
    resize_mode: int = 0
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: bool = False
    initial_noise_multiplier: float = 1.0
    fix_steps: bool = False  # option img2img_fix_steps
    resize_upscaler: str = "None"  # option upscaler_for_img2img (None: Lanczos)
    mask_weight: float = 1.0  # option inpainting_mask_weight (9-channel models)
    overlay_inpaint: bool = True
    soft: Any = None  # Soft Inpainting settings (its always-on entry, enabled), else None
    script: Any = None  # a selectable script's runner (`script_name`), with a `run(p, ctx)` method
    init_img_hash: str | None = None  # option save_init_img: md5 of the (last) saved init image

    @property
    def job_count(self) -> int:
        return self.n_iter


def prepare_img2img(req: Img2ImgRequest, options: dict[str, Any], models: ModelNames,
                    upscalers: UpscalerRegistry, max_pixels: int, init_images: list[Image.Image],
                    mask: Image.Image | None, scripts: tuple[str, ...] = (),
                    attach_script: Callable[[Img2ImgProcessing], None] | None = None) -> Img2ImgProcessing:
    """Resolve and validate an img2img request whose images the server has decoded already. `scripts`: the
    selectable script names served; `attach_script(p)` parses the request's script into `p.script`
    (jobs/scripts.py) at the point where A1111's script checks run."""
    if not init_images:
        raise InvalidRequest("init_images", "send at least one base64 image")
    if req.latent_mask not in (None, ""):
        raise InvalidRequest("latent_mask", "not supported (A1111 cannot decode it either); send null and put "
                             "the mask in `mask`")
    p = prepare_common(req, options, models, upscalers, cls=Img2ImgProcessing,
                       scripts=scripts)
    assert isinstance(p, Img2ImgProcessing)
    if len(init_images) > p.batch_size:
        raise InvalidRequest("init_images", f"{len(init_images)} images for batch_size {p.batch_size}: send at "
                             "most batch_size images (one is repeated over the batch; k <= batch_size make "
                             "a batch of k), or raise batch_size")
    if len(init_images) > 1:
        p.batch_size = len(init_images)  # A1111: k images make a batch of k
    for i, img in enumerate(init_images):
        if img.width < MIN_SIDE or img.height < MIN_SIDE:
            raise InvalidRequest(f"init_images[{i}]", f"the image is {img.width}x{img.height}; at least "
                                 f"{MIN_SIDE}x{MIN_SIDE} needed")
    p.init_images = list(init_images)
    what = "the size or batch_size"
    if keeps_input_size(req) and req.script_name in (None, "", "None"):
        # the Tiled Diffusion entry's keep_input_size (its default): the first init image's size, as the
        # extension sets it (with a selectable script, the script decides the size)
        p.width, p.height = first_pass_size(init_images[0].width, init_images[0].height)
        what = ("the init image or batch_size (Tiled Diffusion's keep_input_size samples at the image's "
                "size; send it false to sample at width x height)")
    p.resize_mode = req.resize_mode
    if mask is not None:
        p.mask = _mask_for(mask, init_images)
    blur = req.mask_blur
    p.mask_blur_x = req.mask_blur_x if blur is None else blur
    p.mask_blur_y = req.mask_blur_y if blur is None else blur
    p.mask_round = req.mask_round
    if p.soft is not None and p.mask is not None:  # A1111's Soft Inpainting: a soft (unrounded) mask
        p.mask_round = False
        p.extra_generation_params.update(p.soft.infotext())
    p.inpainting_fill = req.inpainting_fill
    p.inpaint_full_res = req.inpaint_full_res
    p.inpaint_full_res_padding = req.inpaint_full_res_padding
    p.inpainting_mask_invert = bool(req.inpainting_mask_invert)
    noise = req.initial_noise_multiplier
    p.initial_noise_multiplier = float(options.get("initial_noise_multiplier", 1.0) if noise is None else noise)
    p.fix_steps = bool(options.get("img2img_fix_steps", False))
    name = options.get("upscaler_for_img2img")
    p.resize_upscaler = "None" if name in (None, "", "None") else resolve_hires_upscaler(
        upscalers, str(name), "override_settings.upscaler_for_img2img")
    if upscalers.is_latent(p.resize_upscaler):
        raise InvalidRequest("override_settings.upscaler_for_img2img", "must be a pixel upscaler from "
                             "/sdapi/v1/upscalers, not a latent mode (resize_mode 3 is the latent upscale)")
    if attach_script is not None:
        attach_script(p)
    p.mask_weight = float(options.get("inpainting_mask_weight", 1.0))
    p.overlay_inpaint = bool(options.get("overlay_inpaint", True))
    budget_w, budget_h = p.width, p.height
    if p.mask is not None and p.inpaint_full_res:  # the result is pasted back at the input's size
        budget_w = max(budget_w, max(i.width for i in init_images))
        budget_h = max(budget_h, max(i.height for i in init_images))
    check_pixel_budget(budget_w, budget_h, p.batch_size, max_pixels, what)
    check_seed_resize(p, max_pixels)
    return p


def _mask_for(mask: Image.Image, images: list[Image.Image]) -> Image.Image:
    """The mask at the init images' size. Another size of the same aspect ratio (within a pixel) is
    stretched to it; another aspect ratio cannot be placed, and neither can init images of several sizes."""
    sizes = {img.size for img in images}
    if len(sizes) > 1:
        raise InvalidRequest("mask", f"one mask for init images of different sizes {sorted(sizes)}: send init "
                             "images of one size")
    (w, h), (mw, mh) = sizes.pop(), mask.size
    if (mw, mh) == (w, h):
        return mask
    if abs(mw * h / mh - w) > 1 and abs(mh * w / mw - h) > 1:
        raise InvalidRequest("mask", f"the mask is {mw}x{mh} but the init image is {w}x{h}; send a mask of the "
                             "image's size (or of the same aspect ratio, which is stretched to it)")
    return mask.resize((w, h), Image.Resampling.LANCZOS)
