"""What every job shares: its context and result, the ONE routine that runs a sampling pass, and the pieces
around a pass (decode, face restoration, images to a tensor).

`run_pass` is the path of every pass of every job kind: txt2img pass one, hires pass two, img2img (and so
SD upscale's tiles and Ultimate SD Upscale's passes), with the refiner handover inside it. In order:
seeded noise, the `process_before_every_sampling` hook, the sampler plan, the prompt's networks, the
prompt conditioning, the progress callback, the refiner switch, the ControlNet units' residuals, then the
denoising loop under seamless padding. A new per-pass capability goes here, once."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from pipeline.diffusion import denoise
from pipeline.diffusion.loop import PassResult
from pipeline.diffusion.seamless import circular_padding
from pipeline.diffusion.tiled.auto import tiles_for_pass
from pipeline.jobs import controlnet, refiner
from pipeline.jobs.extensions import Extensions
from pipeline.jobs.processing import Processing, sampler_params
from pipeline.models import taesd, vae_codec
from pipeline.models.networks.activation import activate_for_pass, activate_for_refiner
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
class JobResult:
    images: list[Image.Image]
    infotexts: list[str]
    info: dict[str, Any]
    unet_calls: list[int] = field(default_factory=list)  # per pass, for tests and benchmarks
    # extra images to save (image, infotext, file-name suffix): option save_images_before_highres_fix
    extra_saves: list[tuple[Image.Image, str, str]] = field(default_factory=list)


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
                                       p.seed_resize_from)
    if spec.noise_multiplier != 1.0:
        p.extra_generation_params["Noise multiplier"] = spec.noise_multiplier
        noise = noise * spec.noise_multiplier
    # option img2img_extra_noise: more noise on the start of img2img and of the hires pass (A1111 1.10)
    extra_noise = float(p.options.get("img2img_extra_noise", 0.0) or 0.0) if spec.init is not None else 0.0
    if extra_noise > 0:
        p.extra_generation_params["Extra noise"] = extra_noise
    ctx.extensions.call("process_before_every_sampling", p, pass_no=spec.pass_no, x=spec.init, noise=noise)
    settings = denoise.PassSettings(sampler=spec.sampler, schedule=spec.schedule, steps=spec.steps,
                                    params=sampler_params(p, spec.sampler), strength=spec.strength,
                                    fix_steps=spec.fix_steps)
    plan = denoise.plan_pass(model, settings, gens, seeds)
    if spec.conds_networks is not None:
        activate_for_pass(ctx.networks, model, p, spec.conds_networks)
    else:
        activate_for_pass(ctx.networks, model, p, spec.prompt, spec.negative_prompt)  # before the conds
    calls = len(plan.timesteps)
    first_calls = p.counters.setdefault("first_pass_calls", calls)
    # prompt editing counts the hires pass's steps after pass one's, as A1111 does
    sched = {"steps": first_calls, "hires_steps": calls} if spec.pass_no == 2 else {"steps": calls}
    prompts, negatives = [spec.prompt] * len(seeds), [spec.negative_prompt] * len(seeds)

    def conds_for(m: SDModel):
        if m is not model:  # the refiner takes over: the prompt's networks and embeddings on it too, as A1111
            # (inside the sampling loop's inference mode: patches and their backups must stay normal tensors)
            with torch.inference_mode(False), torch.no_grad():
                activate_for_refiner(ctx.networks, m, p, spec.prompt, spec.negative_prompt)
        return denoise.prompt_conditioning(m, prompts, negatives, p.clip_skip, **sched)

    cond_at = conds_for(model)
    if spec.conds_networks is not None:  # the conds are encoded: now the pass's own networks for the UNet
        activate_for_pass(ctx.networks, model, p, spec.prompt, spec.negative_prompt)
    callback = denoise.progress_callback(ctx.state, p.options, model.family, plan.steps, ctx.previews)
    switch = refiner.pass_switch(p, ctx.models, ctx.state, plan, spec.pass_no, conds_for)
    controlnet.write_infotext(p.controlnet, p.extra_generation_params)
    control = controlnet.for_pass(p.controlnet, ctx.controlnets, model, spec.width, spec.height, spec.pass_no,
                                  spec.pass_no == 2, (p.width, p.height), spec.picture)
    with circular_padding([model.unet, model.vae], p.tiling):
        image_cond = spec.image_cond
        if image_cond is None and is_inpainting_model(model):
            image_cond = _whole_image_masked(model, len(seeds), spec.width, spec.height)
        return denoise.denoise(model, plan, noise, spec.init, cond_at, spec.cfg_scale, spec.width, spec.height,
                               callback, keep_mask=spec.keep, image_cond=image_cond, switch=switch,
                               crop=denoise.sdxl_crop(p.options), soft=spec.soft, extra_noise=extra_noise,
                               control=control,
                               tiles=tiles_for_pass(p, model, len(seeds), spec.width, spec.height))


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
    with circular_padding([model.vae], p.tiling):
        x = vae_codec.decode(model, latents)
    return vae_codec.to_images(x)


def encode(model: SDModel, images: torch.Tensor, p: Processing, ctx: JobContext | None = None
           ) -> torch.Tensor:
    """Images in [0, 1] as scaled float32 latents, by the full VAE or (option sd_vae_encode_method) TAESD.
    Circular padding (`tiling`) is the caller's."""
    net = _tiny_vae(p, ctx, "encoder", model)
    if net is not None:
        return ctx.tiny_vae.encode(net, images, model.device)  # type: ignore[union-attr]
    return vae_codec.encode(model, images).float()


def restore_faces(images: list[Image.Image], p: Processing, ctx: JobContext) -> list[Image.Image]:
    """A1111's restore_faces on each final image: fully restored (no blend), CodeFormer fidelity from the
    option `code_former_weight`."""
    if p.face_restorer is None or ctx.faces is None:
        return images
    weight = float(p.options.get("code_former_weight", 0.5))
    return [ctx.faces.restore(img, p.face_restorer, 1.0, weight) for img in images]


def finish_images(model: SDModel, latents: torch.Tensor, p: Processing, ctx: JobContext) -> list[Image.Image]:
    """A pass's latents as the job's final images: decoded, ControlNet units' post-processing (inpaint_only,
    recolor), faces restored."""
    return restore_faces(controlnet.postprocess(p.controlnet, decode(model, latents, p, ctx)), p, ctx)
