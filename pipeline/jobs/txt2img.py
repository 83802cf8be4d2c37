"""txt2img with hires fix: pass one, upscale (latent or pixel), pass two, as A1111 defines them.

`run_txt2img` reads top to bottom like the algorithm; the helpers below it do one thing each."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.diffusion import denoise

from pipeline.models import networks

from pipeline.diffusion import samplers

from pipeline.models import vae_codec as vae
from pipeline.infotext import codec as infotext_mod
from pipeline.jobs import refiner as refiner_mod
from pipeline.runtime.errors import Interrupted
from pipeline.jobs.extensions import Extensions
from pipeline.jobs.processing import Processing
from pipeline.diffusion.loop import PassResult
from pipeline.models.sd_model import SDModel
from pipeline.runtime.job_state import JobState
from pipeline.diffusion.tiled.auto import tiles_for_pass
from pipeline.diffusion.seamless import circular_padding
from upscalers.latent import interpolate_args

log = logging.getLogger("hiresd.txt2img")
VERSION = "hiresd-0.1.0"


class Models(Protocol):
    def get(self, title: str) -> SDModel: ...
    def info(self, title: str) -> dict[str, Any]: ...


class PixelUpscaler(Protocol):
    def upscale_to(self, image: Image.Image, name: str, width: int, height: int,
                   should_stop: Any) -> Image.Image: ...


@dataclass
class Context:
    models: Models
    upscaler: PixelUpscaler
    extensions: Extensions
    state: JobState
    faces: Any = None  # upscalers.faces.FaceRestorers, for restore_faces
    networks: Any = None  # pipeline.models.networks.Networks: LoRA tags applied per pass (None: only stripped)


@dataclass
class Txt2ImgResult:
    images: list[Image.Image]
    infotexts: list[str]
    info: dict[str, Any]
    unet_calls: list[int] = field(default_factory=list)  # per pass, for tests and benchmarks


def run_txt2img(p: Processing, ctx: Context) -> Txt2ImgResult:
    state = ctx.state
    bs = p.batch_size
    p.lay_out_batches()
    weights = refiner_mod.with_swap_cost(p, _job_weights(p))
    state.begin("scripts_txt2img", p.job_count, weights)
    images: list[Image.Image] = []
    infotexts: list[str] = []
    calls: list[int] = []
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
            first = PassResult(_encode_firstpass(model, p) if _is_latent(p) else torch.empty(0))
        else:
            first = _sample(model, p, ctx, seeds, subseeds, p.width, p.height, None, pass_no=1)
            calls.append(first.unet_calls)
            refined = first.model is not None and first.model is not model
            model = first.model or model  # the refiner, when it took over: its VAE decodes
        if not p.enable_hr or isinstance(first.stopped, Interrupted):
            batch = _restore_faces(_decode(model, first.latents, p), p, ctx)
            images += batch
            infotexts += [_infotext(p, ctx, i) for i in range(it * bs, it * bs + len(batch))]
            continue

        # -- upscale -----------------------------------------------------------------------------
        state.set_job(job_no + 1, batch_name, p.hr_steps)
        ctx.extensions.call("before_hr", p)
        p.is_hr_pass = True
        pixels: list[Image.Image] | None = None
        if _is_latent(p):
            latents = _latent_upscale(first.latents, p)
        else:
            firsts = [p.firstpass_image] if p.firstpass_image is not None else _decode(model, first.latents, p)
            pixels = [_pixel_upscale(img, p, ctx) for img in firsts]
        # No second pass after a skip in pass one, an interrupt or skip that arrived between the passes
        # (in before_hr or while upscaling), or denoising 0: the result is the upscaled first pass.
        stopped = first.stopped is not None or state.interrupted or state.skipped
        second_pass = p.denoising_strength > 0 and not stopped
        if pixels is not None and not second_pass:  # already pixels: no model needed, hires one included
            pixels = _restore_faces([_crop_image(img, p) for img in pixels], p, ctx)
            images += pixels
            infotexts += [_infotext(p, ctx, i) for i in range(it * bs, it * bs + len(pixels))]
            continue
        hr_model = model  # the hires checkpoint is loaded only for a pass two that runs
        # after a refiner in pass one, pass two runs on the hires checkpoint or the base again (A1111)
        hr_key = p.hr_checkpoint or (p.checkpoint if refined else None)
        if second_pass and hr_key:
            model = None  # let the manager free the main model if it evicts it for the hires one
            hr_model = ctx.models.get(hr_key)
        if pixels is not None:
            latents = vae.encode(hr_model, _to_tensor(pixels))
        latents = _crop(latents, p)

        # -- pass two ----------------------------------------------------------------------------
        if second_pass:
            second = _sample(hr_model, p, ctx, seeds, subseeds, p.hires.final_w, p.hires.final_h, latents,
                             pass_no=2)
            calls.append(second.unet_calls)
            latents = second.latents
            hr_model = second.model or hr_model
        batch = _restore_faces(_decode(hr_model, latents, p), p, ctx)
        images += batch
        infotexts += [_infotext(p, ctx, i) for i in range(it * bs, it * bs + len(batch))]
    info = _info_json(p, ctx, infotexts, state)
    return Txt2ImgResult(images, infotexts, info, calls)


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


def _sample(model: SDModel, p: Processing, ctx: Context, seeds: list[int], subseeds: list[int], width: int,
            height: int, init_latents: torch.Tensor | None, pass_no: int) -> PassResult:
    """One pass: noise from the per-image seeds, sampler plan, conditioning, then the shared denoising
    routine (pass two denoises the upscaled latent from `denoising_strength`, A1111's fixed-steps rule)."""
    hr = pass_no == 2
    noise, gens = denoise.seeded_noise(model, width, height, seeds, subseeds, p.subseed_strength,
                                       p.seed_resize_from)
    ctx.extensions.call("process_before_every_sampling", p, pass_no=pass_no, x=init_latents, noise=noise)
    settings = denoise.PassSettings(
        sampler=p.hr_sampler if hr else p.sampler, schedule=p.hr_schedule if hr else p.schedule,
        steps=p.hr_steps if hr else p.steps, strength=p.denoising_strength if hr else None, fix_steps=True,
        params=samplers.SamplerParams(eta=p.eta, s_churn=p.s_churn, s_tmin=p.s_tmin, s_tmax=p.s_tmax,
                                      s_noise=p.s_noise))
    plan = denoise.plan_pass(model, settings, gens, seeds)
    calls = len(plan.timesteps)
    first_calls = p.counters.setdefault("first_pass_calls", calls)
    prompt = (p.hr_prompt or p.prompt) if hr else p.prompt
    negative = (p.hr_negative_prompt or p.negative_prompt) if hr else p.negative_prompt
    networks.activate_for_pass(ctx.networks, model, p, prompt, negative)  # before the conditioning
    sched = {"steps": first_calls, "hires_steps": calls} if hr else {"steps": calls}
    cond_at = denoise.prompt_conditioning(model, [prompt] * len(seeds), [negative] * len(seeds), p.clip_skip,
                                          **sched)
    callback = denoise.progress_callback(ctx.state, p.options, model.family, plan.steps)
    switch = refiner_mod.pass_switch(p, ctx.models, ctx.state, plan, pass_no, lambda m: denoise.prompt_conditioning(
        m, [prompt] * len(seeds), [negative] * len(seeds), p.clip_skip, **sched))
    with circular_padding([model.unet, model.vae], p.tiling):
        image_cond = _inpainting_model_cond(model, len(seeds), width, height)
        return denoise.denoise(model, plan, noise, init_latents, cond_at, p.hr_cfg_scale if hr else p.cfg_scale,
                               width, height, callback, switch=switch, image_cond=image_cond,
                               crop=denoise.sdxl_crop(p.options),
                               tiles=tiles_for_pass(p, model, len(seeds), width, height))


def _inpainting_model_cond(model: SDModel, batch: int, width: int, height: int) -> torch.Tensor | None:
    """A 9-channel inpainting model in txt2img, as A1111 drives it: the whole image masked (a ones mask)
    over a mid-grey masked image, VAE-encoded."""
    if int(model.unet.config.in_channels) != 2 * model.latent_channels + 1:
        return None
    grey = torch.full((1, 3, height, width), 0.5)
    latent = vae.encode(model, grey).float()
    mask = torch.ones(1, 1, *latent.shape[-2:], device=latent.device)
    return torch.cat([mask, latent], dim=1).repeat(batch, 1, 1, 1)


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


def _pixel_upscale(image: Image.Image, p: Processing, ctx: Context) -> Image.Image:
    """A1111's resize_image(just resize) with the named upscaler, to the latent-aligned target size."""
    tw, th = p.hires.latent_upscale[1] * 8, p.hires.latent_upscale[0] * 8
    state = ctx.state
    return ctx.upscaler.upscale_to(image.convert("RGB"), p.hr_upscaler or "None", tw, th,
                                   lambda: state.interrupted or state.skipped)


def _encode_firstpass(model: SDModel, p: Processing) -> torch.Tensor:
    img = p.firstpass_image.convert("RGB").resize((p.width, p.height), Image.Resampling.LANCZOS)
    return vae.encode(model, _to_tensor([img]))


def _to_tensor(images: list[Image.Image]) -> torch.Tensor:
    arr = np.stack([np.asarray(i.convert("RGB"), dtype=np.float32) / 255.0 for i in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2)


def _decode(model: SDModel, latents: torch.Tensor, p: Processing) -> list[Image.Image]:
    with circular_padding([model.vae], p.tiling):
        x = vae.decode(model, latents)
    return vae.to_images(x)


def _restore_faces(images: list[Image.Image], p: Processing, ctx: Context) -> list[Image.Image]:
    """A1111's restore_faces on each final image: fully restored (no blend), CodeFormer fidelity from the
    option `code_former_weight`."""
    if p.face_restorer is None or ctx.faces is None:
        return images
    weight = float(p.options.get("code_former_weight", 0.5))
    return [ctx.faces.restore(img, p.face_restorer, 1.0, weight) for img in images]


def _infotext(p: Processing, ctx: Context, index: int) -> str:
    info = ctx.models.info(p.checkpoint)
    params: list[tuple[str, Any]] = [
        ("Steps", p.steps),
        ("Sampler", p.sampler.name),
        ("Schedule type", samplers.label_for_infotext(p.sampler, p.schedule)),
        ("CFG scale", p.cfg_scale),
        ("Seed", p.all_seeds[index]),
        ("Face restoration", p.face_restorer.name if p.face_restorer is not None else None),
        ("Size", f"{p.width}x{p.height}"),
        ("Model hash", info.get("hash")),
        ("Model", info.get("model_name")),
        ("VAE hash", info.get("vae_hash") if p.options.get("add_vae_hash_to_info", True) else None),
        ("VAE", info.get("vae_name") if p.options.get("add_vae_name_to_info", True) else None),
    ]
    if p.subseed_strength > 0:
        params += [("Variation seed", p.all_subseeds[index]), ("Variation seed strength", p.subseed_strength)]
    if p.seed_resize_from[0] > 0 and p.seed_resize_from[1] > 0:
        params.append(("Seed resize from", f"{p.seed_resize_from[0]}x{p.seed_resize_from[1]}"))
    # A1111 writes it here from extra_generation_params (img2img and the hires pass set it), not at their end
    params.append(("Denoising strength", p.extra_generation_params.get(
        "Denoising strength", p.denoising_strength if p.enable_hr else None)))
    if p.clip_skip > 1:
        params.append(("Clip skip", p.clip_skip))
    params.append(("RNG", "CPU"))
    if p.tiling:
        params.append(("Tiling", True))
    for key, label, default in (("s_churn", "Sigma churn", 0.0), ("s_tmin", "Sigma tmin", 0.0),
                                ("s_tmax", "Sigma tmax", 0.0), ("s_noise", "Sigma noise", 1.0)):
        value = getattr(p, key)
        if key in p.sampler.params and value is not None and value != default:
            params.append((label, value))
    default_eta = getattr(p.sampler, "eta_default", None)
    if p.eta is not None and "eta" in p.sampler.params and p.eta != default_eta:  # A1111: only when not default
        params.append(("Eta", p.eta))
    if p.enable_hr:
        params += _hires_params(p, ctx)
    params += _refiner_params(p, ctx)
    params += [(k, v) for k, v in p.extra_generation_params.items() if k != "Denoising strength"]
    params.append(("Version", VERSION))
    return infotext_mod.format_infotext(p.all_prompts[index], p.all_negative_prompts[index], params)


def _refiner_params(p: Processing, ctx: Context) -> list[tuple[str, Any]]:
    out = refiner_mod.switch_by_steps_infotext(p.options)
    if p.refiner is not None:
        info = ctx.models.info(p.refiner.checkpoint)
        name = f"{info.get('model_name')} [{info['hash']}]" if info.get("hash") else info.get("model_name")
        out += p.refiner.infotext(name, p.enable_hr, p.options)
    return out


def _hires_params(p: Processing, ctx: Context) -> list[tuple[str, Any]]:
    """Hires keys in A1111's insertion order; each only when it says something."""
    out: list[tuple[str, Any]] = []
    if p.hr_checkpoint:
        hr = ctx.models.info(p.hr_checkpoint)
        out.append(("Hires checkpoint", hr.get("short_title") or hr.get("title")))
    if p.hr_sampler is not None and p.hr_sampler.name != p.sampler.name:
        out.append(("Hires sampler", p.hr_sampler.name))
    if p.hr_prompt and p.hr_prompt != p.prompt:
        out.append(("Hires prompt", p.hr_prompt))
    if p.hr_negative_prompt and p.hr_negative_prompt != p.negative_prompt:
        out.append(("Hires negative prompt", p.hr_negative_prompt))
    first_label = samplers.label_for_infotext(p.sampler, p.schedule)
    hr_label = samplers.label_for_infotext(p.hr_sampler, p.hr_schedule)
    if hr_label != first_label:
        out.append(("Hires schedule type", hr_label))
    out.append((p.hires.infotext_key, p.hires.infotext_value))
    if p.hr_second_pass_steps:
        out.append(("Hires steps", p.hr_second_pass_steps))
    if p.request.hr_upscaler not in (None, ""):
        out.append(("Hires upscaler", p.hr_upscaler))
    if p.hr_cfg is not None and p.hr_cfg != p.cfg_scale:
        out.append(("Hires CFG Scale", p.hr_cfg))
    return out


def _info_json(p: Processing, ctx: Context, infotexts: list[str], state: JobState) -> dict[str, Any]:
    info = ctx.models.info(p.checkpoint)
    n = len(infotexts)
    extra = {k: (v if _jsonable(v) else None) for k, v in p.extra_generation_params.items()}
    return {
        "prompt": p.request.prompt,  # as sent: styles show in all_prompts and the infotexts, as in A1111
        "all_prompts": p.all_prompts[:n] or [p.prompt],
        "negative_prompt": p.request.negative_prompt,
        "all_negative_prompts": p.all_negative_prompts[:n] or [p.negative_prompt],
        "seed": p.seed,
        "all_seeds": p.all_seeds[:n] or [p.seed],
        "subseed": p.subseed,
        "all_subseeds": p.all_subseeds[:n] or [p.subseed],
        "subseed_strength": p.subseed_strength,
        "width": p.width,
        "height": p.height,
        "sampler_name": p.sampler.name,
        "cfg_scale": p.cfg_scale,
        "steps": p.steps,
        "batch_size": p.batch_size,
        "restore_faces": p.face_restorer is not None,
        "face_restoration_model": p.face_restorer.name if p.face_restorer is not None else None,
        "sd_model_name": info.get("model_name"),
        "sd_model_hash": info.get("hash"),
        "sd_vae_name": info.get("vae_name"),
        "sd_vae_hash": info.get("vae_hash"),
        "seed_resize_from_w": p.seed_resize_from[0],
        "seed_resize_from_h": p.seed_resize_from[1],
        "denoising_strength": p.denoising_strength,
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": p.styles,
        "job_timestamp": state.snapshot()["state"]["job_timestamp"],
        "clip_skip": p.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": VERSION,
    }


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return not (isinstance(v, float) and math.isnan(v))
    except TypeError:
        return False
