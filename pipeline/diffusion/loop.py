"""One sampling pass: the denoising loop with classifier-free guidance and one per-step callback.

Like k-diffusion's samplers, the loop knows nothing of progress, previews, interrupts or skips: it calls
`callback(i, x, denoised)` after every step, and the callback raises to stop. A callback whose
`preview_content` is "Prompt" or "Negative prompt" (A1111's `live_preview_content`) is also given
`preview=`: that prompt's own clean-latent prediction of the step's last model call. On a stop the loop
returns the
last denoised estimate (what A1111 returns for an interrupted pass) together with the exception."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from pipeline.diffusion.conditioning import pad_to_same_length
from pipeline.models.sd_model import SDModel
from pipeline.runtime.errors import Interrupted
from pipeline.runtime.job_state import Skipped

if TYPE_CHECKING:
    from pipeline.diffusion.guidance import PassGuidance

STOPS = (Interrupted, Skipped)
COMBINED = "Combined"  # live_preview_content: the guided prediction (what the callback gets as `denoised`)
StepCallback = Callable[[int, torch.Tensor, torch.Tensor | None], None]


@dataclass
class PassResult:
    latents: torch.Tensor
    stopped: BaseException | None = None  # Interrupted or Skipped, when a flag ended the pass early
    unet_calls: int = 0
    model: SDModel | None = None  # the model that ended the pass, when a refiner took over
    notes: dict[str, Any] = field(default_factory=dict)  # infotext keys the pass earned (NGMS, Pad conds)


@dataclass
class Handover:
    """What a mid-pass model switch (the SDXL refiner, pipeline/refiner.py) hands the loop: the model that
    continues, its conditioning for each call, and an SDXL refiner's (prompt, negative) aesthetic scores."""

    model: SDModel
    cond_at: Callable[[int], tuple[Any, Any]]
    aesthetic: tuple[float, float] | None = None


ModelSwitch = Callable[[int, Any, SDModel], "Handover | None"]


class Control(Protocol):
    """Residuals added to the UNet call (ControlNet): told the step before each call, then asked for the
    UNet's extra keyword arguments given its input, timestep, context, keyword arguments and which rows
    are conditioned on the prompt (1) or the negative prompt (0)."""

    def at_step(self, step: int, steps: int) -> None: ...
    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, unet_kwargs: dict[str, Any],
                 cond_rows: torch.Tensor) -> dict[str, Any]: ...
    def after(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor, cond_rows: torch.Tensor
              ) -> torch.Tensor:
        """The UNet's output as the units leave it (inpaint_only's and tile_colorfix's blends)."""
        ...


def sdxl_time_ids(model: SDModel, height: int, width: int, batch: int, crop: tuple[int, int] = (0, 0)
                  ) -> torch.Tensor:
    """SDXL's micro-conditioning: original size, crop (top, left: the options `sdxl_crop_top/left`), target
    size, as A1111 sends them."""
    ids = torch.tensor([[height, width, *crop, height, width]], dtype=model.dtype, device=model.device)
    return ids.repeat(batch, 1)


class MaskBlend(Protocol):
    """Inpainting's latent mask applied around each model call (pipeline/denoise.py)."""

    def before(self, x_in: torch.Tensor, i: int) -> torch.Tensor: ...
    def after(self, out: torch.Tensor, x_in: torch.Tensor, i: int) -> torch.Tensor: ...


def refiner_vector_ids(model: SDModel, height: int, width: int, n_negative: int, n_prompt: int,
                       aesthetic: tuple[float, float], crop: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """An SDXL refiner's micro-conditioning: original size, crop (top, left) and the aesthetic score, the
    negative prompt's rows (first) scored low and the prompt's high, as A1111 sends them."""
    high, low = aesthetic
    rows = [[height, width, *crop, low]] * n_negative + [[height, width, *crop, high]] * n_prompt
    return torch.tensor(rows, dtype=model.dtype, device=model.device)


@dataclass(frozen=True)
class Guidance:
    """A1111's options that change how cond and uncond meet: `pad` ("" off, "pad": `pad_cond_uncond`, "v0":
    `pad_cond_uncond_v0`) with `empty(model)` (the empty prompt's Cond) for "pad"; `s_min_uncond` (NGMS) and
    `s_min_uncond_all`."""

    pad: str = ""
    empty: Any = None
    s_min_uncond: float = 0.0
    s_min_uncond_all: bool = False
    skip_early_cond: float = 0.0  # the option: no negative prompt while call / total calls <= it


def pad_v0(cond: Any, uncond: Any) -> Any:
    """A1111's `pad_cond_uncond_v0`: uncond lengthened by repeating its last token vector, or cut, to cond's
    length."""
    n, m = cond.context.shape[1], uncond.context.shape[1]
    if m < n:
        ctx = torch.cat([uncond.context, uncond.context[:, -1:].repeat(1, n - m, 1)], dim=1)
    else:
        ctx = uncond.context[:, :n]
    return type(uncond)(ctx, uncond.pooled)


def guided_model(model: SDModel, cfg_scale: float, height: int, width: int, keep_uncond: bool = False,
                 image_cond: torch.Tensor | None = None, aesthetic: tuple[float, float] = (6.0, 2.5),
                 crop: tuple[int, int] = (0, 0), guidance: Guidance | None = None,
                 control: Control | None = None, cfg_mix: PassGuidance | None = None
                 ) -> Callable[[torch.Tensor, Any, Any, Any], torch.Tensor]:
    """(x_in, t, cond, uncond) -> guided model output, in float32. With cfg 1 the unconditional half is
    not computed (it cannot change the result), unless `keep_uncond`: then it always is, and the last
    unconditional output stays in the returned function's `last_uncond` (DDIM CFG++ steps along it).
    `guidance.pad` pads cond and uncond of different lengths into one batch (A1111's options; the function's
    `padded` says it happened: "Pad conds" / "Pad conds v0").
    `parts` holds the last call's (negative prompt's, prompt's) outputs (the negative's None when not
    computed), which live previews may show (`live_preview_content`).
    `t` is best a tensor already on the model's device. `image_cond` (B, c, h, w) is concatenated to the
    UNet input's channels, for cond and uncond alike (9-channel inpainting models). `control` adds
    ControlNet residuals to the UNet call (pipeline/models/controlnet/residuals.py). `cfg_mix` (Forge's
    Dynamic Thresholding, PAG, SAG: pipeline/diffusion/guidance.py) makes the guided output from the cond and
    uncond outputs instead of the plain CFG mix."""
    time_ids: dict[tuple[int, int], torch.Tensor] = {}  # SDXL: built once per batch shape, not per step
    needs_uncond = cfg_mix is not None and cfg_mix.needs_uncond

    def vector_ids(n_negative: int, n_prompt: int) -> torch.Tensor:
        key = (n_negative, n_prompt)
        if key not in time_ids:
            time_ids[key] = (
                refiner_vector_ids(model, height, width, n_negative, n_prompt, aesthetic, crop) if model.refiner
                else sdxl_time_ids(model, height, width, n_negative + n_prompt, crop))
        return time_ids[key]

    def run_one(x_in: torch.Tensor, t: Any, cond: Any, negative: bool) -> torch.Tensor:
        return run(x_in, t, cond, cond, single=True, negative=negative)

    def run(x_in: torch.Tensor, t: Any, cond: Any, uncond: Any, single: bool = False,
            negative: bool = False) -> torch.Tensor:
        b = x_in.shape[0]
        use_uncond = (cfg_scale != 1.0 or keep_uncond or needs_uncond) and not single
        if use_uncond and pad and cond.context.shape[1] != uncond.context.shape[1]:
            if pad == "v0":
                uncond = pad_v0(cond, uncond)
            else:
                cond, uncond = pad_to_same_length(cond, uncond, guidance.empty(model))
            run.padded = pad
        if use_uncond and cond.context.shape[1] != uncond.context.shape[1]:
            # prompts of different chunk counts: A1111's default runs the two halves separately
            u = run_one(x_in, t, uncond, True)
            c = run_one(x_in, t, cond, False)
            run.last_uncond = u if keep_uncond else None
            run.parts = (u, c)
            return mix(x_in, t, cond, uncond, u, c)
        x = torch.cat([x_in, x_in]) if use_uncond else x_in
        ctx = torch.cat([uncond.context, cond.context]) if use_uncond else cond.context
        kwargs: dict[str, Any] = {}
        if model.family == "sdxl":
            pooled = torch.cat([uncond.pooled, cond.pooled]) if use_uncond else cond.pooled
            ids = vector_ids(b, b) if use_uncond else (vector_ids(b, 0) if negative else vector_ids(0, b))
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled.to(model.device, model.dtype), "time_ids": ids}
        tt = t if torch.is_tensor(t) else torch.tensor(t)
        if image_cond is not None:
            extra = image_cond.to(x.device, x.dtype)
            x = torch.cat([x, torch.cat([extra, extra]) if use_uncond else extra], dim=1)
        x, tt, ctx = x.to(model.device, model.dtype), tt.to(model.device), ctx.to(model.device, model.dtype)
        if control is not None:
            rows = torch.ones(x.shape[0], device=x.device)
            if use_uncond or negative:
                rows[:b] = 0.0
            kwargs.update(control(x, tt, ctx, kwargs, rows))
        out = model.unet(x, tt, encoder_hidden_states=ctx, return_dict=False, **kwargs)[0]
        if control is not None:
            out = control.after(out, x, tt, rows)
        out = out.float()
        if not use_uncond:
            run.parts = (None, out)
            return out if single or cfg_mix is None else mix(x_in, t, cond, uncond, None, out)
        u, c = out[:b], out[b:]
        run.last_uncond = u if keep_uncond else None
        run.parts = (u, c)
        return mix(x_in, t, cond, uncond, u, c)

    def mix(x_in: torch.Tensor, t: Any, cond: Any, uncond: Any, u: torch.Tensor | None,
            c: torch.Tensor) -> torch.Tensor:
        if cfg_mix is None:
            return u + cfg_scale * (c - u)
        return cfg_mix.combine(x_in, t, cond, uncond, u, c, cfg_scale, run_one)

    pad = guidance.pad if guidance is not None else ""
    run.last_uncond = None
    run.parts = (None, None)  # the last call's (negative prompt's, prompt's) outputs (None: not computed)
    run.padded = ""
    return run


def run_pass(model: SDModel, plan: Any, x: torch.Tensor, cond_at: Callable[[int], tuple[Any, Any]],
             cfg_scale: float, height: int, width: int, callback: StepCallback, *,
             blend: MaskBlend | None = None, image_cond: torch.Tensor | None = None,
             switch: ModelSwitch | None = None,
             wrap_model: Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]] | None = None,
             crop: tuple[int, int] = (0, 0), guidance: Guidance | None = None,
             control: Control | None = None, cfg_mix: PassGuidance | None = None) -> PassResult:
    """Run every timestep of `plan` from `x` (already noised by `plan.start`).

    `cond_at(i)` gives (cond, uncond) for model call i (counted from 0 in each pass, as A1111 counts
    them), so prompt editing and alternation change the conditioning during sampling.
    `callback(step, x, denoised)` runs after every step. `blend` (inpainting) adjusts each call's input
    and guided output; `image_cond` goes to the UNet with every call (see `guided_model`). `switch(i, t,
    model)`, asked before every call, may hand the rest of the pass to another model (the refiner).
    `wrap_model(guided)` replaces the guided model call (tiled diffusion, pipeline/tiled). `crop` is SDXL's
    crop micro-conditioning (top, left). `guidance`: A1111's padding and NGMS options (`Guidance`); NGMS
    (s_min_uncond) drops the negative prompt on every other model call (every call with `s_min_uncond_all`)
    whose noise level is below it, as A1111's CFGDenoiser counts calls and reads the level (the timestep,
    for DDIM/PLMS/UniPC, as A1111's timestep denoiser hands it over). `control` (ControlNet) acts on the
    pass's own model, not on a refiner that takes over. `cfg_mix` changes the CFG mix (see `guided_model`)."""
    scheduler = plan.scheduler
    needs_uncond = getattr(scheduler, "needs_uncond", False)  # DDIM CFG++
    guidance = guidance or Guidance()

    def make_guided(m: SDModel, scale: float, ic: torch.Tensor | None, keep: bool = needs_uncond,
                    ctl: Control | None = None, **kw: Any):
        g = guided_model(m, scale, height, width, keep_uncond=keep, image_cond=ic, crop=crop, guidance=guidance,
                         control=ctl, cfg_mix=cfg_mix, **kw)
        return (wrap_model(g) if wrap_model is not None else g), g

    scale = cfg_scale * getattr(scheduler, "cfg_multiplier", 1.0)
    guided, inner = make_guided(model, scale, image_cond, ctl=control)
    ngms = guidance.s_min_uncond if guidance.s_min_uncond > 0 and not needs_uncond else 0.0
    early = guidance.skip_early_cond if not needs_uncond else 0.0
    total = plan.steps * (2 if plan.sampler.second_order else 1)  # A1111's SamplerData.total_steps
    levels = _call_levels(plan) if ngms else None
    cond_only = make_guided(model, 1.0, image_cond, False, ctl=control)[0] if ngms or early else None
    notes: dict[str, Any] = {}
    denoised: torch.Tensor | None = None
    calls = 0
    # live previews of the prompt's or the negative prompt's own prediction (`live_preview_content`; the
    # callback asks with its `preview_content`), else of the guided one (the step's denoised estimate)
    content = getattr(callback, "preview_content", COMBINED)
    alphas = _call_alphas(plan) if content != COMBINED else None
    v_pred = model.prediction_type == "v_prediction"
    # The UNet gets its timesteps from one upfront copy: a per-step host-to-device copy of a scalar would
    # synchronise the stream every step and stall the GPU while the next step's kernels are launched.
    # (`unet_timesteps`: the nearest whole timesteps with `enable_quantization`, else `timesteps` themselves)
    model_ts = getattr(plan, "unet_timesteps", plan.timesteps)
    unet_timesteps = model_ts.to(model.device)
    with torch.inference_mode():
        for i, t in enumerate(plan.timesteps):
            step = plan.user_step(i)
            handover = switch(i, t, model) if switch is not None else None
            if handover is not None:
                model, cond_at = handover.model, handover.cond_at
                ic = image_cond if model.unet.config.in_channels > x.shape[1] else None
                kw = {"aesthetic": handover.aesthetic} if handover.aesthetic else {}
                guided, inner = make_guided(model, scale, ic, **kw)
                cond_only = make_guided(model, 1.0, ic, False, **kw)[0] if ngms or early else None
                unet_timesteps = model_ts.to(model.device)
                x = x.to(model.device)
            cond, uncond = cond_at(i)
            if control is not None:
                control.at_step(step - 1, plan.steps)
            x_in = scheduler.scale_model_input(x, t)
            if blend is not None:
                x_in = blend.before(x_in, i)
            skip = early > 0 and i / total <= early
            if skip:
                notes["Skip Early CFG"] = early
            elif ngms and (i % 2 or guidance.s_min_uncond_all) and levels[i] < ngms:
                skip = True
                notes["NGMS"] = ngms
                if guidance.s_min_uncond_all:
                    notes["NGMS all steps"] = True
            call = cond_only if skip else guided
            try:
                out = call(x_in, unet_timesteps[i], cond, uncond)
            except STOPS as exc:  # a tiled call checks the flags between its tile batches
                return PassResult(denoised if denoised is not None else x, exc, calls, model, _notes(notes, inner))
            preview = None
            if alphas is not None:
                u, c = getattr(call, "parts", (None, None))
                part = c if content == "Prompt" or u is None else u  # no negative output: A1111's stand-in
                if part is not None:
                    preview = _x0(x_in, part, alphas[i], v_pred)
            if blend is not None:
                out = blend.after(out, x_in, i)
            calls += 1
            extra = {"uncond": inner.last_uncond} if needs_uncond else {}
            res = scheduler.step(out, t, x, **plan.step_kwargs, **extra, return_dict=True)
            x = res.prev_sample
            denoised = getattr(res, "pred_original_sample", None)
            if denoised is None:
                denoised = getattr(res, "denoised", None)
            try:
                if preview is None:
                    callback(step, x, denoised)
                else:
                    callback(step, x, denoised, preview=preview)
            except STOPS as exc:  # the callback stops the pass by raising; anything else is a real error
                return PassResult(denoised if denoised is not None else x, exc, calls, model, _notes(notes, inner))
    return PassResult(x, None, calls, model, _notes(notes, inner))


def _call_alphas(plan: Any) -> list[float]:
    """alphas_cumprod at each model call's noise level (log-sigma interpolated, as LatentMask reads them)."""
    acp = plan.scheduler.alphas_cumprod.double().numpy()
    t = plan.timesteps.double().numpy().clip(0, len(acp) - 1)
    sigmas = np.exp(np.interp(t, np.arange(len(acp)), 0.5 * np.log((1.0 - acp) / acp)))
    return [float(a) for a in 1.0 / (1.0 + sigmas ** 2)]


def _x0(x_in: torch.Tensor, out: torch.Tensor, alpha: float, v_pred: bool) -> torch.Tensor:
    """The clean latent a model output predicts from its (scaled) input at alphas_cumprod `alpha`."""
    sa, s1a = alpha ** 0.5, (1.0 - alpha) ** 0.5
    x_in = x_in.float().to(out.device)
    return sa * x_in - s1a * out if v_pred else (x_in - s1a * out) / sa


def _notes(notes: dict[str, Any], inner: Any) -> dict[str, Any]:
    padded = getattr(inner, "padded", "")
    if padded:
        notes["Pad conds v0" if padded == "v0" else "Pad conds"] = True
    return notes


def _call_levels(plan: Any) -> list[float]:
    """What A1111's CFGDenoiser sees as the noise level of each model call: the sigma for k-diffusion
    samplers, the timestep for the timestep samplers."""
    t = plan.timesteps.double().numpy()
    if plan.sampler.kind == "timesteps":
        return [float(v) for v in t]
    acp = plan.scheduler.alphas_cumprod.double().numpy()
    sigmas = ((1.0 - acp) / acp) ** 0.5
    logs = np.log(sigmas)
    idx = np.arange(len(sigmas))
    return [float(v) for v in np.exp(np.interp(t, idx, logs))]
