"""The Ultimate SD Upscale extension's img2img script (`script_name: "ultimate sd upscale"`).

`script_args` are the extension's 18 positional arguments (`ARGS`, with its defaults; fewer mean the
defaults for the rest). The job: flatten the first init image; upscale it to the target size (model passes
of x4/x3/x2 for the integer factor `ceil(max(W, H) / max(w, h))`, then Lanczos to exactly W x H; upscaler
"None": Lanczos only); redraw its tiles one by one, each an "only masked" inpaint of the whole current
image with `inpainting_fill` original and the request's seed, so later tiles see redrawn neighbours in their
padding; then the optional seam-fix passes at `seams_fix_denoise` (usdu_plan.py has the geometry). One
`n_iter` and `batch_size` 1, as the extension forces. The answer: the redrawn image, plus the seam-fixed one
when a seam fix was asked for (1 or 2 images); each infotext is the last pass's of its stage with `Size` the
final size and the `Ultimate SD upscale ...` keys."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from PIL import Image

from pipeline.infotext.job import job_info, job_infotext
from pipeline.jobs import script_args as arg
from pipeline.jobs.common import JobContext, JobResult
from pipeline.jobs.img2img.prepare import Img2ImgProcessing
from pipeline.jobs.img2img.run import flatten_init, img2img_batches
from pipeline.jobs.processing import check_pixel_budget
from pipeline.jobs.ultimate_upscale_plan import BAND_PASS, NO_SEAMS_FIX, InpaintPass, Plan, upscale_factors
from pipeline.runtime.errors import InvalidRequest

NAME = "ultimate sd upscale"
ARGS: tuple[tuple[str, Any], ...] = (
    ("info", ""), ("tile_width", 512), ("tile_height", 0), ("mask_blur", 8), ("padding", 32),
    ("seams_fix_width", 64), ("seams_fix_denoise", 0.35), ("seams_fix_padding", 16), ("upscaler_index", 0),
    ("save_upscaled_image", True), ("redraw_mode", 0), ("save_seams_fix_image", False),
    ("seams_fix_mask_blur", 4), ("seams_fix_type", 0), ("target_size_type", 0), ("custom_width", 2048),
    ("custom_height", 2048), ("custom_scale", 2.0),
)
REDRAW_MODES = ("Linear", "Chess", "None")
SEAMS_FIX_TYPES = ("None", "Band pass", "Half tile offset pass", "Half tile offset pass + intersections")
TARGET_SIZE_TYPES = ("From img2img settings", "Custom size", "Scale from image size")
MAX_SIDE = 16384


@dataclass(frozen=True)
class UltimateSDUpscale:
    """The parsed script arguments; `run(p, ctx)` is the job."""

    tile_width: int
    tile_height: int
    mask_blur: int
    padding: int
    seams_fix_width: int
    seams_fix_denoise: float
    seams_fix_padding: int
    upscaler: str
    save_upscaled_image: bool
    redraw_mode: int
    save_seams_fix_image: bool
    seams_fix_mask_blur: int
    seams_fix_type: int
    target_size_type: int
    custom_width: int
    custom_height: int
    custom_scale: float

    @classmethod
    def parse(cls, args: list[Any], upscaler_names: list[str], resolve: Any) -> UltimateSDUpscale:
        """The extension's arguments by position; `resolve(name)` -> canonical upscaler name."""
        names = [name for name, _ in ARGS]
        v = arg.fill_defaults(NAME, args, names, [default for _, default in ARGS])
        tile_w = arg.whole(v[1], 1, "tile_width", 0, MAX_SIDE, " of pixels")
        tile_h = arg.whole(v[2], 2, "tile_height", 0, MAX_SIDE, " of pixels")
        if tile_w == 0 and tile_h == 0:
            raise InvalidRequest("script_args[1]", "tile_width and tile_height are both 0: set at least one "
                                 "(0 means 'the same as the other'), e.g. 512")
        for index, size in ((1, tile_w), (2, tile_h)):
            if 0 < size < 8:
                raise InvalidRequest(f"script_args[{index}]", f"{names[index]} {size} is below 8 pixels: "
                                     "send 0 (the same as the other side) or at least 8")
        s = cls(
            tile_width=tile_w or tile_h, tile_height=tile_h or tile_w,
            mask_blur=arg.whole(v[3], 3, "mask_blur", 0, 256),
            padding=arg.whole(v[4], 4, "padding", 0, 2048, " of pixels"),
            seams_fix_width=arg.whole(v[5], 5, "seams_fix_width", 0, 2048, " of pixels"),
            seams_fix_denoise=arg.number(v[6], 6, "seams_fix_denoise", 0.0, 1.0),
            seams_fix_padding=arg.whole(v[7], 7, "seams_fix_padding", 0, 2048, " of pixels"),
            upscaler=arg.upscaler(v[8], 8, "upscaler_index", upscaler_names, resolve),
            save_upscaled_image=arg.flag(v[9], 9, "save_upscaled_image"),
            redraw_mode=arg.choice(v[10], 10, "redraw_mode", REDRAW_MODES),
            save_seams_fix_image=arg.flag(v[11], 11, "save_seams_fix_image"),
            seams_fix_mask_blur=arg.whole(v[12], 12, "seams_fix_mask_blur", 0, 256),
            seams_fix_type=arg.choice(v[13], 13, "seams_fix_type", SEAMS_FIX_TYPES),
            target_size_type=arg.choice(v[14], 14, "target_size_type", TARGET_SIZE_TYPES),
            custom_width=arg.whole(v[15], 15, "custom_width", 8, MAX_SIDE, " of pixels"),
            custom_height=arg.whole(v[16], 16, "custom_height", 8, MAX_SIDE, " of pixels"),
            custom_scale=arg.number(v[17], 17, "custom_scale", 0.0, 16.0, low_open=True),
        )
        if s.seams_fix_type == BAND_PASS and s.seams_fix_width == 0:
            raise InvalidRequest("script_args[5]", "seams_fix_width is 0 with the band pass seam fix: send "
                                 "the band's width in pixels (e.g. 64) or another seams_fix_type")
        return s

    def target_size(self, p: Any, init_w: int, init_h: int) -> tuple[int, int]:
        """The final size: the request's width x height (type 0), custom_width x custom_height (1), or the
        init image times custom_scale rounded up to multiples of 64 (2)."""
        if self.target_size_type == 1:
            return self.custom_width, self.custom_height
        if self.target_size_type == 2:
            return tuple(math.ceil(side * self.custom_scale / 64) * 64 for side in (init_w, init_h))
        return p.width, p.height

    def check(self, p: Any, init_w: int, init_h: int, max_pixels: int) -> None:
        """Before the job is queued: the final image and the largest pass within the pixel budget."""
        width, height = self.target_size(p, init_w, init_h)
        check_pixel_budget(width, height, 1, max_pixels, "the target size (width/height, custom size, scale)")
        redraw, seams_fix = self.passes(width, height)
        biggest = max(redraw + seams_fix, key=lambda s: s.width * s.height, default=None)
        if biggest is not None:
            check_pixel_budget(biggest.width, biggest.height, 1, max_pixels,
                               f"the {biggest.kind} pass size (tile size, padding or seams_fix_width)")

    def passes(self, width: int, height: int) -> tuple[list[InpaintPass], list[InpaintPass]]:
        """The redraw passes and the seam-fix passes over a width x height image, each in order."""
        plan = Plan(width, height, self.tile_width, self.tile_height)
        return (plan.redraw(self.redraw_mode, self.padding, self.mask_blur),
                plan.seams_fix(self.seams_fix_type, self.seams_fix_width, self.seams_fix_padding,
                               self.seams_fix_mask_blur))

    def upscale(self, image: Image.Image, width: int, height: int, ctx: Any) -> Image.Image:
        """Model passes (each A1111's upscale of the image by that factor), then Lanczos to width x height."""
        state = ctx.state
        stop = lambda: state.interrupted or state.skipped  # noqa: E731
        if self.upscaler != "None":
            for factor in upscale_factors(math.ceil(max(width, height) / max(image.width, image.height))):
                if state.interrupted:
                    break
                w, h = image.width * factor, image.height * factor
                image = ctx.upscaler.upscale_to(image, self.upscaler, w, h, stop)
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        return image

    def prepare(self, p: Img2ImgProcessing, init_w: int, init_h: int, max_pixels: int) -> None:
        """Before the job is queued: one image (the extension forces one; only the first init image is
        used), and the target and every pass within the pixel budget."""
        p.n_iter = p.batch_size = 1
        self.check(p, init_w, init_h, max_pixels)

    def run(self, p: Img2ImgProcessing, ctx: JobContext) -> JobResult:
        state = ctx.state
        source = flatten_init(p, p.init_images[0])
        width, height = self.target_size(p, source.width, source.height)
        redraw, seams_fix = self.passes(width, height)
        steps = {False: _steps_run(p, p.denoising_strength), True: _steps_run(p, self.seams_fix_denoise)}
        weights = [float(s.width * s.height * steps[s.seam_fix]) for s in redraw + seams_fix]  # for the ETA
        state.begin(NAME, max(1, len(weights)), weights or None)
        state.set_job(0, "Upscaling")
        image = self.upscale(source, width, height, ctx)
        key = "Ultimate SD upscale "
        p.extra_generation_params.update({
            key + "upscaler": self.upscaler, key + "tile_width": self.tile_width,
            key + "tile_height": self.tile_height, key + "mask_blur": self.mask_blur,
            key + "padding": self.padding,
        })
        done: list[Any] = []  # every pass's img2img result
        image, redraw_p = _inpaint_passes(p, ctx, image, redraw, 0, p.denoising_strength, done)
        images, stages = [image], [redraw_p]
        if self.seams_fix_type != NO_SEAMS_FIX:  # a second image even when an interrupt left it unchanged
            image, seams_p = _inpaint_passes(p, ctx, image, seams_fix, len(redraw), self.seams_fix_denoise,
                                             done)
            images.append(image)
            stages.append(seams_p or redraw_p)
        infotexts, final = [], p
        for stage in stages:
            final = dataclasses.replace(stage or p, width=width, height=height)
            if stage is None:  # nothing was sampled: the request's own settings
                final.lay_out_batches()
            infotexts.append(job_infotext(final, ctx.models, 0))
        info = job_info(final, ctx.models, infotexts, state.job_timestamp)
        info["infotexts"] = infotexts
        info["is_using_inpainting_conditioning"] = any(r.info.get("is_using_inpainting_conditioning")
                                                       for r in done)
        return JobResult(images, infotexts, info, [n for r in done for n in r.unet_calls])


def _steps_run(p: Any, denoise: float) -> int:
    """The sampling steps an img2img at `denoise` runs (A1111's rule, or `steps` with img2img_fix_steps)."""
    return p.steps if p.fix_steps else int(min(denoise, 0.999) * p.steps) + 1


def _inpaint_passes(p: Any, ctx: Any, image: Image.Image, passes: list[InpaintPass], job_offset: int,
                    denoise: float, done: list[Any]) -> tuple[Image.Image, Any]:
    """Each pass in turn on a copy of `image`, whose result is the next pass's input. Stops before the next
    pass once interrupted (a pass cut short inside keeps what it sampled, as any interrupted img2img).
    Appends each call's result to `done`; returns the image and the last call's processing (None when none
    ran)."""
    image, last = image.copy(), None
    for i, step in enumerate(passes):
        if ctx.state.interrupted:
            break
        job = job_offset + i
        ctx.state.set_job(job, f"Ultimate SD upscale: {step.kind} {i + 1} of {len(passes)}")
        ran = inpaint_pass(p, ctx, image, step, denoise, job)
        if ran is not None:
            last, result = ran
            done.append(result)
    return image, last


def inpaint_pass(p: Any, ctx: Any, image: Image.Image, step: InpaintPass, denoise: float,
                 job: int) -> tuple[Img2ImgProcessing, JobResult] | None:
    """One pass, in place: the "only masked" inpaint (inpainting_fill original, the request's seed) of the
    whole image with the pass's mask, run on the crop box it can change (`InpaintPass.region`: same pixels,
    without whole-image work per pass), pasted back. Returns (processing, result); None for an empty mask
    (nothing to repaint; an empty mask would mean img2img of everything)."""
    region = step.region(image.width, image.height)
    if region is None:
        return None
    box, mask = region
    q = dataclasses.replace(
        p, init_images=[image.crop(box)], mask=mask, width=step.width, height=step.height, batch_size=1,
        n_iter=1, inpaint_full_res=True, inpaint_full_res_padding=step.padding, mask_blur_x=0, mask_blur_y=0,
        inpainting_fill=1, resize_mode=0, script=None, counters={}, denoising_strength=denoise,
        extra_generation_params=dict(p.extra_generation_params))
    result = img2img_batches(q, ctx, job_offset=job)
    q.extra_generation_params["Mask blur"] = step.mask_blur  # the mask came blurred already
    if result.images:
        image.paste(result.images[0], box[:2])
    return q, result


def script_info_args(upscaler_names: list[str]) -> list[dict[str, Any]]:
    """/sdapi/v1/script-info `args`: the extension's controls in script_args order, with its labels."""
    def slider(label: str, value: float, lo: float, hi: float, step: float) -> dict[str, Any]:
        return {"label": label, "value": value, "minimum": lo, "maximum": hi, "step": step}

    def dropdown(label: str, choices: tuple[str, ...] | list[str]) -> dict[str, Any]:
        return {"label": label, "value": choices[0], "choices": list(choices)}

    return [
        {"label": None, "value": "Will upscale the image depending on the selected target size type"},
        slider("Tile width", 512, 0, 2048, 64), slider("Tile height", 0, 0, 2048, 64),
        slider("Mask blur", 8, 0, 64, 1), slider("Padding", 32, 0, 512, 1),
        slider("Width", 64, 0, 128, 1), slider("Denoise", 0.35, 0, 1, 0.01), slider("Padding", 16, 0, 128, 1),
        dropdown("Upscaler", upscaler_names), {"label": "Upscaled", "value": True},
        dropdown("Type", REDRAW_MODES), {"label": "Seams fix", "value": False},
        slider("Mask blur", 4, 0, 64, 1), dropdown("Type", SEAMS_FIX_TYPES),
        dropdown("Target size type", TARGET_SIZE_TYPES),
        slider("Custom width", 2048, 64, 8192, 64), slider("Custom height", 2048, 64, 8192, 64),
        slider("Scale", 2, 1, 16, 0.01),
    ]
