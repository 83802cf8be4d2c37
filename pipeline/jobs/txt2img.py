"""txt2img with hires fix: pass one, upscale (latent or pixel), pass two, as A1111 defines them.

`run_txt2img` reads top to bottom like the algorithm; the helpers below it do one thing each."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.diffusion.loop import PassResult
from pipeline.infotext.job import job_info, job_infotext
from pipeline.jobs import refiner as refiner_mod
from pipeline.jobs.common import (
    JobContext,
    JobResult,
    PassSpec,
    decode,
    encode,
    finish_images,
    restore_faces,
    run_pass,
    saves_before_face_restoration,
    to_tensor,
)
from pipeline.jobs.processing import Processing
from pipeline.models.sd_model import SDModel
from pipeline.runtime.errors import Interrupted
from upscalers.latent import interpolate_args

log = logging.getLogger("hiresd.txt2img")


def run_txt2img(p: Processing, ctx: JobContext) -> JobResult:
    state = ctx.state
    bs = p.batch_size
    p.lay_out_batches()
    weights = refiner_mod.with_swap_cost(p, _job_weights(p))
    state.begin("scripts_txt2img", p.job_count, weights)
    images: list[Image.Image] = []
    infotexts: list[str] = []
    calls: list[int] = []
    before_hires: list[tuple[Image.Image, str, str]] = []
    model: SDModel | None = None
    for it in range(p.n_iter):
        if state.interrupted:
            break
        model = ctx.models.get(p.checkpoint)  # a cache hit, unless a hires checkpoint evicted it
        p.iteration = it
        state.clear_skip()
        seeds = p.all_seeds[it * bs:(it + 1) * bs]
        subseeds = p.all_subseeds[it * bs:(it + 1) * bs]
        job_no = it * (2 if p.enable_hr else 1)
        batch_name = f"Batch {it + 1} out of {p.n_iter}" if p.n_iter > 1 else None  # A1111 names only these
        state.set_job(job_no, batch_name, p.steps)

        # -- pass one -----------------------------------------------------------------------------
        p.is_hr_pass = False
        refined = False
        if p.firstpass_image is not None:
            first = PassResult(_encode_firstpass(model, p, ctx) if _is_latent(p) else torch.empty(0))
        else:
            first = run_pass(model, p, ctx, seeds, subseeds, _first_pass(p))
            calls.append(first.unet_calls)
            refined = first.model is not None and first.model is not model
            model = first.model or model  # the refiner, when it took over: its VAE decodes
        if not p.enable_hr or isinstance(first.stopped, Interrupted):
            batch = finish_images(model, first.latents, p, ctx)
            images += batch
            infotexts += [job_infotext(p, ctx.models, i) for i in range(it * bs, it * bs + len(batch))]
            continue

        # -- upscale -----------------------------------------------------------------------------
        state.set_job(job_no + 1, batch_name, p.hr_steps)
        ctx.extensions.call("before_hr", p)
        p.is_hr_pass = True
        pixels: list[Image.Image] | None = None
        firsts = None
        if not _is_latent(p) or _saves_before_hires(p):
            firsts = ([p.firstpass_image] if p.firstpass_image is not None
                      else decode(model, first.latents, p, ctx))
        if _saves_before_hires(p) and firsts is not None:
            before_hires += [(img, job_infotext(p, ctx.models, it * bs + i), "-before-highres-fix")
                             for i, img in enumerate(firsts)]
        if _is_latent(p):
            latents = _latent_upscale(first.latents, p)
        else:
            pixels = [_pixel_upscale(img, p, ctx) for img in firsts or []]
        # No second pass after a skip in pass one, an interrupt or skip that arrived between the passes
        # (in before_hr or while upscaling), or denoising 0: the result is the upscaled first pass.
        stopped = first.stopped is not None or state.interrupted or state.skipped
        second_pass = p.denoising_strength > 0 and not stopped
        if pixels is not None and not second_pass:  # already pixels: no model needed, hires one included
            pixels = restore_faces([_crop_image(img, p) for img in pixels], p, ctx)
            images += pixels
            infotexts += [job_infotext(p, ctx.models, i) for i in range(it * bs, it * bs + len(pixels))]
            continue
        hr_model = model  # the hires checkpoint is loaded only for a pass two that runs
        # after a refiner in pass one, pass two runs on the hires checkpoint or the base again (A1111)
        hr_key = p.hr_checkpoint or (p.checkpoint if refined else None)
        if second_pass and hr_key:
            model = None  # let the manager free the main model if it evicts it for the hires one
            hr_model = ctx.models.get(hr_key)
        if pixels is not None:
            latents = encode(hr_model, to_tensor(pixels), p, ctx)
        latents = _crop(latents, p)

        # -- pass two ----------------------------------------------------------------------------
        if second_pass:
            second = run_pass(hr_model, p, ctx, seeds, subseeds, _second_pass(p, latents, same_model=not hr_key))
            calls.append(second.unet_calls)
            latents = second.latents
            hr_model = second.model or hr_model
        batch = finish_images(hr_model, latents, p, ctx)
        images += batch
        infotexts += [job_infotext(p, ctx.models, i) for i in range(it * bs, it * bs + len(batch))]
    info = job_info(p, ctx.models, infotexts, state.job_timestamp)
    return JobResult(images, infotexts, info, calls,
                     before_hires + saves_before_face_restoration(p, infotexts))


def _saves_before_hires(p: Processing) -> bool:
    """A1111's option save_images_before_highres_fix: the first-pass images are saved too (suffix
    `-before-highres-fix`) when the request saves its images and no first-pass image was sent."""
    return (bool(p.options.get("save_images_before_highres_fix")) and bool(p.request.save_images)
            and p.firstpass_image is None)


# -- the pieces -----------------------------------------------------------------------------------

def _job_weights(p: Processing) -> list[float]:
    """Relative cost of each job (pass) for the ETA: steps x pixels."""
    one = float(p.steps * p.width * p.height)
    if not p.enable_hr:
        return [one] * p.n_iter
    two = float(p.hr_steps * p.hires.final_w * p.hires.final_h) if p.denoising_strength > 0 else one * 0.05
    return [one, two] * p.n_iter


def _is_latent(p: Processing) -> bool:
    return p.hr_upscaler is None or p.hr_upscaler.startswith("Latent")


def _first_pass(p: Processing) -> PassSpec:
    return PassSpec(1, p.width, p.height, p.sampler, p.schedule, p.steps, p.prompt, p.negative_prompt,
                    p.cfg_scale)


def _second_pass(p: Processing, latents: torch.Tensor, same_model: bool = True) -> PassSpec:
    """Pass two denoises the upscaled latent from `denoising_strength`, A1111's fixed-steps rule. Option
    hires_fix_use_firstpass_conds (without a hires checkpoint, as A1111): its conditioning is encoded with
    pass one's networks (LoRA text-encoder weights) active, as A1111 encodes it in pass one's set-up."""
    firstpass = same_model and bool(p.options.get("hires_fix_use_firstpass_conds"))
    return PassSpec(2, p.hires.final_w, p.hires.final_h, p.hr_sampler, p.hr_schedule, p.hr_steps,
                    p.hr_prompt or p.prompt, p.hr_negative_prompt or p.negative_prompt, p.hr_cfg_scale,
                    init=latents, strength=p.denoising_strength, fix_steps=True,
                    conds_networks=p.prompt if firstpass else None)


def _latent_upscale(latents: torch.Tensor, p: Processing) -> torch.Tensor:
    mode, antialias = interpolate_args(p.hr_upscaler)
    size = p.hires.latent_upscale
    x = latents.float()
    if mode in ("nearest", "nearest-exact"):
        return F.interpolate(x, size=size, mode=mode)
    return F.interpolate(x, size=size, mode=mode, antialias=antialias, align_corners=False)




def _crop(latents: torch.Tensor, p: Processing) -> torch.Tensor:
    top, bottom, left, right = p.hires.crop
    h, w = latents.shape[-2:]
    return latents[:, :, top:h - bottom, left:w - right]


def _crop_image(image: Image.Image, p: Processing) -> Image.Image:
    """The latent crop in pixels, for results returned without a second pass."""
    top, bottom, left, right = (8 * c for c in p.hires.crop)
    w, h = image.size
    return image.crop((left, top, w - right, h - bottom)) if top or bottom or left or right else image


def _pixel_upscale(image: Image.Image, p: Processing, ctx: JobContext) -> Image.Image:
    """A1111's resize_image(just resize) with the named upscaler, to the latent-aligned target size."""
    tw, th = p.hires.latent_upscale[1] * 8, p.hires.latent_upscale[0] * 8
    state = ctx.state
    return ctx.upscaler.upscale_to(image.convert("RGB"), p.hr_upscaler or "None", tw, th,
                                   lambda: state.interrupted or state.skipped)


def _encode_firstpass(model: SDModel, p: Processing, ctx: JobContext) -> torch.Tensor:
    img = p.firstpass_image.convert("RGB").resize((p.width, p.height), Image.Resampling.LANCZOS)
    return encode(model, to_tensor([img]), p, ctx)
