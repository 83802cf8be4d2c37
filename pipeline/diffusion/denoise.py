"""Denoise a latent from strength d: the one routine behind hires pass two and img2img (and pass one,
which is the same loop started from pure noise).

A pass is three steps, in this order (extension hooks may run between the first two):
1. `seeded_noise`: the batch's noise from the per-image seeds, subseeds and "resize seed from", drawn from
   the noise source (`randn_source`), which then feeds the sampler's own draws (seeds.ImageNoise);
2. `plan_pass`: the sampler's schedule; a denoising pass takes A1111's step rule (`samplers.denoise_steps`:
   fixed steps for hires pass two and `img2img_fix_steps`, int(d * steps) + 1 steps for plain img2img);
3. `denoise`: noise the init latents to the plan's first level (`latent + noise * sigma`, or the
   timestep samplers' sqrt(alpha) mix), run the sampling loop, and for inpainting keep the unmasked latent
   (`LatentMask`, blended around every model call as A1111 does for each sampler family, and once more
   after the loop)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.diffusion import samplers
from pipeline.diffusion.conditioning import EMPHASIS_MODES, PromptEncoder
from pipeline.diffusion.loop import Control, Guidance, ModelSwitch, PassResult, StepCallback, run_pass
from pipeline.diffusion.preview import NO_FILES, Previews, preview_fallback
from pipeline.diffusion.samplers.schedules import NoiseTable
from pipeline.diffusion.scheduled_conditioning import ScheduledConditioning
from pipeline.diffusion.seeds import ImageNoise
from pipeline.diffusion.soft_inpainting import SoftInpainting, noise_level
from pipeline.diffusion.tiled import TiledGuidance, TileSettings
from pipeline.models.sd_model import SDModel
from pipeline.runtime.errors import InvalidRequest
from pipeline.runtime.job_state import JobState


@dataclass(frozen=True)
class PassSettings:
    """What one sampling pass runs: sampler, schedule, steps (as requested), parameters, and for a
    denoising pass its strength and step rule (None strength: from pure noise, all `steps`)."""

    sampler: samplers.SamplerSpec
    schedule: samplers.ScheduleSpec
    steps: int
    params: samplers.SamplerParams
    strength: float | None = None
    fix_steps: bool = True
    overrides: samplers.ScheduleOverrides | None = None  # the options that reshape the schedule


def seeded_noise(model: SDModel, width: int, height: int, seeds: list[int], subseeds: list[int],
                 subseed_strength: float, seed_resize_from: tuple[int, int], *, source: str = "GPU",
                 ensd: int = 0) -> tuple[torch.Tensor, ImageNoise]:
    """(B, C, height/8, width/8) initial noise on the model's device, and the pass's noise stream that
    the sampler continues (seeds.ImageNoise: `source` is the `randn_source` option, `ensd` the
    `eta_noise_seed_delta` one)."""
    shape = (model.latent_channels, height // 8, width // 8)
    rng = ImageNoise(shape, seeds, subseeds, subseed_strength, seed_resize_from, source=source,
                     device=model.device, ensd=ensd)
    return rng.first(), rng


def plan_pass(model: SDModel, settings: PassSettings, generators: ImageNoise, seeds: list[int]
              ) -> samplers.StepPlan:
    return samplers.make_plan(settings.sampler, settings.schedule, model.scheduler_config, steps=settings.steps,
                              denoising_strength=settings.strength, fix_steps=settings.fix_steps,
                              params=settings.params, generators=generators, seeds=seeds, family=model.family,
                              overrides=settings.overrides)


class LatentMask:
    """A1111's inpainting blend. `keep` (B or 1, 1, h, w) is 1 where the init latent stays, `init` the clean
    init latents. k-diffusion samplers: the guided x0 prediction of every call becomes
    x0 * (1 - keep) + init * keep (the step then pulls x toward the original there); timestep samplers
    (DDIM, DDIM CFG++, PLMS, UniPC): the model's input is blended with the clean init latent before the call
    (A1111's `mask_before_denoising`). `final` blends the sampled latent once more.

    `soft` (Soft Inpainting, soft_inpainting.py) replaces each blend by its noise-dependent soft blend and
    skips the final one."""

    def __init__(self, model: SDModel, plan: samplers.StepPlan, init: torch.Tensor, keep: torch.Tensor,
                 soft: SoftInpainting | None = None):
        self.init = init.float()
        self.keep = keep.float().to(self.init.device)
        self.before_model = plan.sampler.kind == "timesteps"
        self.v_pred = model.prediction_type == "v_prediction"
        self.soft = soft
        acp = np.asarray(plan.scheduler.alphas_cumprod, dtype=np.float64)
        timesteps = plan.timesteps.double().numpy().clip(0, len(acp) - 1)
        sigmas = np.atleast_1d(NoiseTable(acp).t_to_sigma(timesteps))
        self.alphas = [1.0 / (1.0 + float(s) ** 2) for s in sigmas]
        self.levels = [noise_level(plan.sampler.kind, float(s), float(t))
                       for s, t in zip(sigmas, np.atleast_1d(timesteps), strict=True)]

    def _mix(self, x: torch.Tensor, source: torch.Tensor, i: int) -> torch.Tensor:
        keep = self.keep.to(x.device, x.dtype)
        source = source.to(x.device, x.dtype)
        if self.soft is not None:
            return self.soft.blend(source, x, self.soft.step_mask(1 - keep, self.levels[i]))
        return x * (1 - keep) + source * keep

    def before(self, x_in: torch.Tensor, i: int) -> torch.Tensor:
        return self._mix(x_in, self.init, i) if self.before_model else x_in

    def after(self, out: torch.Tensor, x_in: torch.Tensor, i: int) -> torch.Tensor:
        if self.before_model:
            return out
        a = self.alphas[i]
        sa, s1a = math.sqrt(a), math.sqrt(1.0 - a)
        x_in = x_in.float()
        if self.v_pred:
            x0 = sa * x_in - s1a * out
            return (sa * x_in - self._mix(x0, self.init, i)) / s1a
        x0 = (x_in - s1a * out) / sa
        return (x_in - sa * self._mix(x0, self.init, i)) / s1a

    def final(self, latents: torch.Tensor) -> torch.Tensor:
        if self.soft is not None:  # A1111's soft inpainting keeps the sampled latent as it is
            return latents
        keep = self.keep.to(latents.device)
        return latents.float() * (1 - keep) + self.init.to(latents.device) * keep


def denoise(model: SDModel, plan: samplers.StepPlan, noise: torch.Tensor, init_latents: torch.Tensor | None,
            cond_at, cfg_scale: float, width: int, height: int, callback: StepCallback, *,
            keep_mask: torch.Tensor | None = None, image_cond: torch.Tensor | None = None,
            switch: ModelSwitch | None = None, tiles: TileSettings | None = None,
            crop: tuple[int, int] = (0, 0), soft: SoftInpainting | None = None,
            guidance: Guidance | None = None, control: Control | None = None, cfg_mix: Any = None
            ) -> PassResult:
    """Start from `init_latents` noised to the plan's first level (pure noise when None) and sample.

    `keep_mask` (inpainting, 1 = keep the init latent) blends as `LatentMask` says; `image_cond` is the
    9-channel models' extra input; `switch` may hand the pass to the refiner (pipeline/refiner.py);
    `tiles` runs every model call over latent tiles merged as MultiDiffusion / Mixture of Diffusers (the
    callback's `on_tiles(done, total)`, when it has one, runs after every tile batch); `crop`
    is SDXL's crop conditioning (`sdxl_crop`); `soft` makes the inpainting blend Soft Inpainting's;
    `guidance` A1111's padding and NGMS options (loop.Guidance); `control` adds ControlNet residuals to
    every model call; `cfg_mix` changes the CFG mix (Forge's guidance scripts, pipeline/diffusion/guidance.py).
    (A1111's `img2img_extra_noise` is in the plan's start noise: samplers/plan.py.)"""
    init = None if init_latents is None else init_latents.float().to(model.device)
    x = plan.start(noise.to(model.device), init)
    # a mask that keeps nothing (all white) is plain img2img: no blend, whose eps round trip would only
    # add rounding
    keeps = keep_mask is not None and init is not None and bool(keep_mask.any())
    blend = LatentMask(model, plan, init, keep_mask, soft) if keeps else None
    wrap = None
    if tiles is not None:
        if image_cond is not None:
            raise InvalidRequest("tiled_diffusion", "tiled sampling is not available with a 9-channel "
                                 "inpainting checkpoint; send it without tiled_diffusion")
        if control is not None:
            raise InvalidRequest("tiled_diffusion", "tiled sampling is not available with ControlNet units; "
                                 "send one of them")
        lh, lw = x.shape[-2:]
        on_tiles = getattr(callback, "on_tiles", None)
        if len(tiles.windows(lh, lw)) > 1:  # one tile covering the latent is the untiled call itself
            wrap = lambda guided: TiledGuidance(guided, tiles, lh, lw, on_tiles)
    result = run_pass(model, plan, x, cond_at, cfg_scale, height, width, callback, blend=blend,
                      image_cond=image_cond, switch=switch, wrap_model=wrap, crop=crop, guidance=guidance,
                      control=control, cfg_mix=cfg_mix)
    if blend is not None:
        result.latents = blend.final(result.latents)
    return result


def sdxl_crop(options: dict[str, Any]) -> tuple[int, int]:
    """SDXL's crop micro-conditioning (top, left), from the options `sdxl_crop_top` / `sdxl_crop_left` as
    A1111 sends it to the base model and the refiner (0, 0 unless set)."""
    return int(options.get("sdxl_crop_top", 0)), int(options.get("sdxl_crop_left", 0))


def prompt_encoder(model: SDModel) -> PromptEncoder:
    """The model's prompt encoder, made once and cached on the model."""
    encoder = model.extra.get("prompt_encoder")
    if encoder is None:
        encoder = model.extra["prompt_encoder"] = PromptEncoder.from_model(model)
    return encoder


def prompt_conditioning(model: SDModel, prompts: list[str], negatives: list[str], clip_skip: int,
                        emphasis: str = "Original", old_scheduling: bool = False, *,
                        comma_padding_backtrack: int = 20, sdxl_clip_l_skip: bool = False,
                        old_emphasis: bool = False, **schedule_steps: int):
    """cond_at(i) -> (cond, uncond) for model call i, with prompt editing scheduled over `schedule_steps`
    (`steps`, and for a hires pass `hires_steps`), the model's prompt encoder cached on the model. `emphasis`,
    `comma_padding_backtrack`, `sdxl_clip_l_skip` and `old_emphasis` (`use_old_emphasis_implementation`)
    are the options of those names (set on the encoder for every pass, so no job leaves them to the next)."""
    encoder = prompt_encoder(model)
    if emphasis not in EMPHASIS_MODES:
        raise InvalidRequest("emphasis", f"unknown emphasis mode {emphasis!r}", list(EMPHASIS_MODES))
    encoder.emphasis = emphasis
    encoder.comma_padding_backtrack = int(comma_padding_backtrack)
    encoder.sdxl_clip_l_skip = bool(sdxl_clip_l_skip)
    encoder.old_emphasis = bool(old_emphasis)
    conds = ScheduledConditioning(encoder, prompts, clip_skip=clip_skip, old_scheduling=old_scheduling,
                                  **schedule_steps)
    unconds = ScheduledConditioning(encoder, negatives, clip_skip=clip_skip, negative=True,
                                    old_scheduling=old_scheduling, **schedule_steps)
    return lambda i: (conds.at(i), unconds.at(i))


def text_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options that shape prompt encoding besides `emphasis`, as `prompt_conditioning` takes them."""
    return {"comma_padding_backtrack": int(options.get("comma_padding_backtrack", 20)),
            "sdxl_clip_l_skip": bool(options.get("sdxl_clip_l_skip", False)),
            "old_emphasis": bool(options.get("use_old_emphasis_implementation", False))}


def progress_callback(state: JobState, options: dict[str, Any], family: str, steps: int,
                      previews: Previews | None = None) -> StepCallback:
    """The per-step hook of a pass: progress, live previews every `show_progress_every_n_steps` (by
    `show_progress_type`, preview.py; of the prediction `live_preview_content` names; of the whole batch as
    a grid with `show_progress_grid`), and the interrupt/skip
    check (which raises to stop the loop). Its
    `on_tiles(done, total)` does the same after each tile batch of a tiled model call
    (`JobState.set_tiles`), so a flag stops a long tiled step."""
    every = int(options.get("show_progress_every_n_steps", 10) or 0)
    live = bool(options.get("live_previews_enable", True)) and every > 0
    method = options.get("show_progress_type")
    grid = options if bool(options.get("show_progress_grid", True)) else None  # the layout's options
    render = previews or NO_FILES
    if live:
        preview_fallback(method)

    def callback(step: int, x: torch.Tensor, denoised: torch.Tensor | None,
                 preview: torch.Tensor | None = None) -> None:
        shown = preview if preview is not None else denoised
        preview = None
        if live and (step % every == 0 or step == steps):
            src = (shown if shown is not None else x).detach().clone()
            preview = lambda src=src: render.render(src, family, method, grid)  # noqa: E731 - made lazily
        state.set_step(step, steps, preview)
        state.check()

    def on_tiles(done: int, total: int) -> None:  # tiled sampling: progress and the flags per tile batch
        state.set_tiles(done, total)
        state.check()

    callback.on_tiles = on_tiles  # type: ignore[attr-defined]
    # what previews show (A1111's live_preview_content): the loop hands the prompt's or the negative
    # prompt's own prediction as `preview`; "Combined" is the guided estimate (`denoised`)
    content = str(options.get("live_preview_content") or "Prompt") if live else "Combined"
    callback.preview_content = content  # type: ignore[attr-defined]
    return callback
