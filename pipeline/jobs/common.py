"""What every job shares: its context and result, the ONE routine that runs a sampling pass, and the pieces
around a pass (decode, face restoration, images to a tensor).

`run_pass` is the path of every pass of every job kind: txt2img pass one, hires pass two, img2img (and so
SD upscale's tiles and Ultimate SD Upscale's passes), with the refiner handover inside it. In order:
seeded noise, the `process_before_every_sampling` hook, the sampler plan, the prompt's networks, the
prompt conditioning, the progress callback, the refiner switch, the ControlNet units' residuals, then the
denoising loop under seamless padding, with the pass's UNet patches (jobs/unet_patches.py: Hypertile, token
merging, Deep Shrink; jobs/forge_pass.py: Forge's FreeU, and the mid-block attention of SAG and PAG; removed
after the pass, and installed on the refiner too when it takes over) and Forge's guidance changes (Dynamic
Thresholding, PAG, SAG). A new per-pass capability goes here, once."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from pipeline.diffusion import denoise
from pipeline.diffusion.loop import Guidance, PassResult
from pipeline.diffusion.prompts import get_prompt_schedules
from pipeline.diffusion.samplers import ScheduleOverrides
from pipeline.diffusion.seamless import circular_padding
from pipeline.diffusion.seeds import eta_noise_seed_delta, randn_source
from pipeline.diffusion.tiled.auto import tiles_for_pass
from pipeline.jobs import controlnet, refiner
from pipeline.jobs.extensions import Extensions
from pipeline.jobs.forge_pass import ForgePass, tiled_vae
from pipeline.jobs.processing import Processing, sampler_params
from pipeline.jobs.speed import vae_hypertile_for
from pipeline.jobs.unet_patches import pass_info, pass_patches
from pipeline.models import taesd, vae_codec
from pipeline.models.networks.activation import activate_for_pass, activate_for_refiner
from pipeline.models.patches import apply_patches
from pipeline.models.sd_model import SDModel
from pipeline.runtime.job_state import JobState


class Models(Protocol):
    def get(self, title: str) -> SDModel: ...
    def info(self, title: str) -> dict[str, Any]: ...


class PixelUpscaler(Protocol):
    def upscale_to(self, image: Image.Image, name: str, width: int, height: int,
                   should_stop: Any) -> Image.Image: ...


@dataclass
class JobContext:
    """What a running job reaches: the models, the pixel upscaler, extension hooks, its progress state, the
    face restorers and the extra networks (LoRA tags applied per pass; None: only stripped)."""

    models: Models
    upscaler: PixelUpscaler
    extensions: Extensions
    state: JobState
    faces: Any = None  # upscalers.faces.FaceRestorers, for restore_faces
    networks: Any = None  # pipeline.models.networks.Networks
    previews: Any = None  # pipeline.diffusion.preview.Previews (Approx NN files), for live previews
    tiny_vae: Any = None  # pipeline.models.taesd.TinyVAEs (TAESD files), for the TAESD VAE methods
    controlnets: Any = None  # pipeline.models.controlnet.ControlNetStore, for ControlNet units


@dataclass
class Companion:
    """An image that goes right after a result, without an infotext of its own (A1111's inpainting mask
    outputs, options return_mask / save_mask and their `_composite` twins): `returned` follows the result in
    the response's `images` (and the grid); `saved` is saved after it (file-name `suffix`, the result's
    infotext) when the results are."""

    image: Image.Image
    suffix: str
    returned: bool
    saved: bool


@dataclass
class JobResult:
    images: list[Image.Image]
    infotexts: list[str]
    info: dict[str, Any]
    unet_calls: list[int] = field(default_factory=list)  # per pass, for tests and benchmarks
    # extra images to save (image, infotext, file-name suffix): option save_images_before_highres_fix
    extra_saves: list[tuple[Image.Image, str, str]] = field(default_factory=list)
    # per result image (or empty: none), the images that go right after it (server/deps.py places them)
    companions: list[list[Companion]] = field(default_factory=list)


@dataclass(frozen=True)
class PassSpec:
    """What one pass of a job samples. `strength` None: from pure noise with all `steps`; else denoise
    `init` from that strength (`fix_steps`: A1111's fixed-steps rule of hires pass two and
    img2img_fix_steps, else int(d * steps) + 1 steps). `keep` (inpainting, 1 = keep the init latent) and
    `image_cond` (9-channel inpainting models) as `denoise.denoise` takes them; `noise_multiplier` scales
    the initial noise (img2img's `initial_noise_multiplier`); `picture` the init pictures ControlNet units
    without an image of their own use."""

    pass_no: int  # 1, or 2 for the hires pass: the hooks, the refiner and prompt editing see it
    width: int
    height: int
    sampler: Any
    schedule: Any
    steps: int
    prompt: str
    negative_prompt: str
    cfg_scale: float
    init: torch.Tensor | None = None
    strength: float | None = None
    fix_steps: bool = True
    keep: torch.Tensor | None = None
    image_cond: torch.Tensor | None = None
    noise_multiplier: float = 1.0
    soft: Any = None  # Soft Inpainting settings (diffusion/soft_inpainting.py) for the inpainting blend
    picture: Any = None  # img2img: the init pictures (controlnet.PassPicture), for ControlNet units
    # the prompt whose networks are active while this pass's conditioning is encoded, when not the pass's
    # own (option hires_fix_use_firstpass_conds: pass one's, as A1111 encodes pass two's conds in pass one)
    conds_networks: str | None = None


def run_pass(model: SDModel, p: Processing, ctx: JobContext, seeds: list[int], subseeds: list[int],
             spec: PassSpec) -> PassResult:
    """One sampling pass of job `p` for the images with these seeds."""
    noise, gens = denoise.seeded_noise(model, spec.width, spec.height, seeds, subseeds, p.subseed_strength,
                                       p.seed_resize_from, source=randn_source(p.options),
                                       ensd=eta_noise_seed_delta(p.options))
    if spec.noise_multiplier != 1.0:
        p.extra_generation_params["Noise multiplier"] = spec.noise_multiplier
        noise = noise * spec.noise_multiplier
    ctx.extensions.call("process_before_every_sampling", p, pass_no=spec.pass_no, x=spec.init, noise=noise)
    settings = denoise.PassSettings(sampler=spec.sampler, schedule=spec.schedule, steps=spec.steps,
                                    params=sampler_params(p, spec.sampler), strength=spec.strength,
                                    fix_steps=spec.fix_steps, overrides=ScheduleOverrides.from_options(p.options))
    plan = denoise.plan_pass(model, settings, gens, seeds)
    if settings.overrides.downcast:  # A1111 notes it first, when it sets up the model's schedule
        p.extra_generation_params["Downcast alphas_cumprod"] = True
    if settings.overrides.zero_snr:
        p.extra_generation_params["Noise Schedule"] = "Zero Terminal SNR"
    p.extra_generation_params.update(plan.notes)  # Discard penultimate sigma, Schedule min sigma, ...
    if spec.conds_networks is not None:
        activate_for_pass(ctx.networks, model, p, spec.conds_networks)
    else:
        activate_for_pass(ctx.networks, model, p, spec.prompt, spec.negative_prompt)  # before the conds
    calls = len(plan.timesteps)
    first_calls = p.counters.setdefault("first_pass_calls", calls)
    # prompt editing counts the hires pass's steps after pass one's, as A1111 does
    sched = {"steps": first_calls, "hires_steps": calls} if spec.pass_no == 2 else {"steps": calls}
    prompts, negatives = [spec.prompt] * len(seeds), [spec.negative_prompt] * len(seeds)

    emphasis = str(p.options.get("emphasis") or "Original")
    old = bool(p.options.get("use_old_scheduling"))
    if old and _old_timelines_differ(prompts + negatives, sched):
        p.extra_generation_params["Old prompt editing timelines"] = True

    def conds_for(m: SDModel):
        if m is not model:  # the refiner takes over: the prompt's networks and embeddings on it too, as A1111
            # (inside the sampling loop's inference mode: patches and their backups must stay normal tensors)
            with torch.inference_mode(False), torch.no_grad():
                activate_for_refiner(ctx.networks, m, p, spec.prompt, spec.negative_prompt)
        return denoise.prompt_conditioning(m, prompts, negatives, p.clip_skip, emphasis, old,
                                           **denoise.text_options(p.options), **sched)

    cond_at = conds_for(model)
    if spec.conds_networks is not None:  # the conds are encoded: now the pass's own networks for the UNet
        activate_for_pass(ctx.networks, model, p, spec.prompt, spec.negative_prompt)
    callback = denoise.progress_callback(ctx.state, p.options, model.family, plan.steps, ctx.previews)
    switch = refiner.pass_switch(p, ctx.models, ctx.state, plan, spec.pass_no, conds_for)
    controlnet.write_infotext(p.controlnet, p.extra_generation_params)
    control = controlnet.for_pass(p.controlnet, ctx.controlnets, model, spec.width, spec.height, spec.pass_no,
                                  spec.pass_no == 2, (p.width, p.height), spec.picture)
    info = pass_info(p, spec.pass_no, spec.width, spec.height, seeds)
    forge = ForgePass.open(p, model, plan, spec.cfg_scale)
    patches = pass_patches(p, info) + (forge.patches if forge is not None else [])
    with contextlib.ExitStack() as stack:
        stack.enter_context(apply_patches(model, patches, info))
        if patches and switch is not None:
            switch = _patching_switch(switch, patches, info, stack)
        stack.enter_context(circular_padding([model.unet, model.vae], p.tiling))
        image_cond = spec.image_cond
        if image_cond is None and is_inpainting_model(model):
            image_cond = _whole_image_masked(model, len(seeds), spec.width, spec.height)
        result = denoise.denoise(model, plan, noise, spec.init, cond_at, spec.cfg_scale, spec.width, spec.height,
                                 callback, keep_mask=spec.keep, image_cond=image_cond, switch=switch,
                                 crop=denoise.sdxl_crop(p.options), soft=spec.soft, control=control,
                                 tiles=tiles_for_pass(p, model, len(seeds), spec.width, spec.height),
                                 guidance=_guidance(p), cfg_mix=forge.guidance if forge is not None else None)
    p.extra_generation_params.update(result.notes)  # NGMS, Pad conds: what the pass did, as A1111 notes it
    if (emphasis != "Original" and not p.options.get("use_old_emphasis_implementation")
            and any("(" in t or "[" in t for t in (spec.prompt, spec.negative_prompt))):
        # A1111 notes a non-default mode that had brackets (not its old implementation, which returns first)
        p.extra_generation_params["Emphasis"] = emphasis
    return result


def _old_timelines_differ(texts: list[str], sched: dict[str, int]) -> bool:
    """A1111 writes `Old prompt editing timelines` only when the old rule schedules the prompts otherwise."""
    steps, hires = sched["steps"], sched.get("hires_steps")
    return get_prompt_schedules(texts, steps, hires, True) != get_prompt_schedules(texts, steps, hires, False)


def _guidance(p: Processing) -> Guidance:
    """A1111's options on how cond and uncond meet: `pad_cond_uncond_v0` (first) or `pad_cond_uncond`;
    NGMS from the request's `s_min_uncond`, else the option, and `s_min_uncond_all`; `skip_early_cond`."""
    o = p.options
    pad = "v0" if o.get("pad_cond_uncond_v0") else ("pad" if o.get("pad_cond_uncond") else "")
    ngms = getattr(p.request, "s_min_uncond", None)
    ngms = float(o.get("s_min_uncond") or 0.0) if ngms is None else float(ngms)
    return Guidance(pad, lambda m: denoise.prompt_encoder(m).empty(p.clip_skip), ngms,
                    bool(o.get("s_min_uncond_all")), float(o.get("skip_early_cond") or 0.0))


def _patching_switch(switch: Any, patches: list[Any], info: Any, stack: contextlib.ExitStack) -> Any:
    """The refiner switch, installing the pass's patches on the model it hands over to (removed with the
    pass's)."""
    def patched(i: int, t: Any, model: SDModel) -> Any:
        handover = switch(i, t, model)
        if handover is not None:
            stack.enter_context(apply_patches(handover.model, patches, info))
        return handover

    return patched


def is_inpainting_model(model: SDModel) -> bool:
    """A 9-channel UNet: latent + mask + masked-image latent."""
    return int(model.unet.config.in_channels) == 2 * model.latent_channels + 1


def _whole_image_masked(model: SDModel, batch: int, width: int, height: int) -> torch.Tensor:
    """A 9-channel inpainting model without an image to inpaint, as A1111 drives it in txt2img: the whole
    image masked (a ones mask) over a mid-grey masked image, VAE-encoded."""
    grey = torch.full((1, 3, height, width), 0.5)
    latent = vae_codec.encode(model, grey).float()
    mask = torch.ones(1, 1, *latent.shape[-2:], device=latent.device)
    return torch.cat([mask, latent], dim=1).repeat(batch, 1, 1, 1)


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB images as a (B, 3, H, W) float tensor in [0, 1]."""
    arr = np.stack([np.asarray(i.convert("RGB"), dtype=np.float32) / 255.0 for i in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2)


def _tiny_vae(p: Processing, ctx: JobContext | None, kind: str, model: SDModel) -> Any:
    """The TAESD decoder/encoder when the option `sd_vae_decode_method` / `sd_vae_encode_method` asks for
    it (models/taesd.py), else None; with the option on, the infotext says which one coded the images."""
    option = "sd_vae_decode_method" if kind == "decoder" else "sd_vae_encode_method"
    if p.options.get(option) != "TAESD" or model.latent_channels != 4 or model.vae_scale_factor != 8:
        return None
    tiny = getattr(ctx, "tiny_vae", None)
    net = tiny.get(kind, model.family) if tiny is not None else None
    p.extra_generation_params[taesd.LABELS[kind]] = "TAESD" if net is not None else taesd.FALLBACK
    return net


def decode(model: SDModel, latents: torch.Tensor, p: Processing, ctx: JobContext | None = None
           ) -> list[Image.Image]:
    """Latents as 8-bit pictures, by the full VAE or (option sd_vae_decode_method) TAESD."""
    net = _tiny_vae(p, ctx, "decoder", model)
    if net is not None:
        return vae_codec.to_images(ctx.tiny_vae.decode(net, latents))  # type: ignore[union-attr]
    f = model.vae_scale_factor
    with circular_padding([model.vae], p.tiling), \
            vae_hypertile_for(p, model.vae, latents.shape[-1] * f, latents.shape[-2] * f):
        x = vae_codec.decode(model, latents, force_tiled=tiled_vae(p))
    return vae_codec.to_images(x)


def encode(model: SDModel, images: torch.Tensor, p: Processing, ctx: JobContext | None = None
           ) -> torch.Tensor:
    """Images in [0, 1] as scaled float32 latents, by the full VAE or (option sd_vae_encode_method) TAESD.
    Circular padding (`tiling`) is the caller's."""
    net = _tiny_vae(p, ctx, "encoder", model)
    if net is not None:
        return ctx.tiny_vae.encode(net, images, model.device)  # type: ignore[union-attr]
    return vae_codec.encode(model, images, force_tiled=tiled_vae(p)).float()


def restore_faces(images: list[Image.Image], p: Processing, ctx: JobContext) -> list[Image.Image]:
    """A1111's restore_faces on each final image: fully restored (no blend), CodeFormer fidelity from the
    option `code_former_weight`."""
    if p.face_restorer is None or ctx.faces is None:
        return images
    if p.options.get("save_images_before_face_restoration") and getattr(p.request, "save_images", False):
        p.unrestored += [img.copy() for img in images]
    weight = float(p.options.get("code_former_weight", 0.5))
    unload = bool(p.options.get("face_restoration_unload", False))
    return [ctx.faces.restore(img, p.face_restorer, 1.0, weight, unload=unload) for img in images]


def saves_before_face_restoration(p: Processing, infotexts: list[str]) -> list[tuple[Image.Image, str, str]]:
    """A1111's option save_images_before_face_restoration (with save_images): the final images as they were
    before restore_faces, saved too with the suffix `-before-face-restoration` (the k-th is image k's)."""
    return [(img, infotexts[k], "-before-face-restoration")
            for k, img in enumerate(p.unrestored[:len(infotexts)])]


def finish_images(model: SDModel, latents: torch.Tensor, p: Processing, ctx: JobContext) -> list[Image.Image]:
    """A pass's latents as the job's final images: decoded, ControlNet units' post-processing (inpaint_only,
    recolor), faces restored."""
    return restore_faces(controlnet.postprocess(p.controlnet, decode(model, latents, p, ctx)), p, ctx)
