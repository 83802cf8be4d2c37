"""One sampling pass: the denoising loop with classifier-free guidance and one per-step callback.

Like k-diffusion's samplers, the loop knows nothing of progress, previews, interrupts or skips: it calls
`callback(i, x, denoised)` after every step, and the callback raises to stop. On a stop the loop returns the
last denoised estimate (what A1111 returns for an interrupted pass) together with the exception."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from pipeline.errors import Interrupted
from pipeline.model import SDModel
from pipeline.state import Skipped

STOPS = (Interrupted, Skipped)
StepCallback = Callable[[int, torch.Tensor, torch.Tensor | None], None]


@dataclass
class PassResult:
    latents: torch.Tensor
    stopped: BaseException | None = None  # Interrupted or Skipped, when a flag ended the pass early
    unet_calls: int = 0


def sdxl_time_ids(model: SDModel, height: int, width: int, batch: int) -> torch.Tensor:
    """SDXL's micro-conditioning: original size, crop (0, 0), target size, as A1111 sends them."""
    ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=model.dtype, device=model.device)
    return ids.repeat(batch, 1)


class MaskBlend(Protocol):
    """Inpainting's latent mask applied around each model call (pipeline/denoise.py)."""

    def before(self, x_in: torch.Tensor, i: int) -> torch.Tensor: ...
    def after(self, out: torch.Tensor, x_in: torch.Tensor, i: int) -> torch.Tensor: ...


def guided_model(model: SDModel, cfg_scale: float, height: int, width: int, keep_uncond: bool = False,
                 image_cond: torch.Tensor | None = None) -> Callable[[torch.Tensor, Any, Any, Any], torch.Tensor]:
    """(x_in, t, cond, uncond) -> guided model output, in float32. With cfg 1 the unconditional half is
    not computed (it cannot change the result), unless `keep_uncond`: then it always is, and the last
    unconditional output stays in the returned function's `last_uncond` (DDIM CFG++ steps along it).
    `t` is best a tensor already on the model's device. `image_cond` (B, c, h, w) is concatenated to the
    UNet input's channels, for cond and uncond alike (9-channel inpainting models)."""
    time_ids: dict[int, torch.Tensor] = {}  # SDXL: built once per batch size, not per step (no H2D copy)

    def run_one(x_in: torch.Tensor, t: Any, cond: Any) -> torch.Tensor:
        return run(x_in, t, cond, cond, single=True)

    def run(x_in: torch.Tensor, t: Any, cond: Any, uncond: Any, single: bool = False) -> torch.Tensor:
        b = x_in.shape[0]
        use_uncond = (cfg_scale != 1.0 or keep_uncond) and not single
        if use_uncond and cond.context.shape[1] != uncond.context.shape[1]:
            # prompts of different chunk counts: A1111's default runs the two halves separately
            u = run_one(x_in, t, uncond)
            c = run_one(x_in, t, cond)
            run.last_uncond = u if keep_uncond else None
            return u + cfg_scale * (c - u)
        x = torch.cat([x_in, x_in]) if use_uncond else x_in
        ctx = torch.cat([uncond.context, cond.context]) if use_uncond else cond.context
        kwargs: dict[str, Any] = {}
        if model.family == "sdxl":
            pooled = torch.cat([uncond.pooled, cond.pooled]) if use_uncond else cond.pooled
            if x.shape[0] not in time_ids:
                time_ids[x.shape[0]] = sdxl_time_ids(model, height, width, x.shape[0])
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled.to(model.device, model.dtype),
                                           "time_ids": time_ids[x.shape[0]]}
        tt = t if torch.is_tensor(t) else torch.tensor(t)
        if image_cond is not None:
            extra = image_cond.to(x.device, x.dtype)
            x = torch.cat([x, torch.cat([extra, extra]) if use_uncond else extra], dim=1)
        out = model.unet(x.to(model.device, model.dtype), tt.to(model.device),
                         encoder_hidden_states=ctx.to(model.device, model.dtype), return_dict=False, **kwargs)[0]
        out = out.float()
        if not use_uncond:
            return out
        u, c = out[:b], out[b:]
        run.last_uncond = u if keep_uncond else None
        return u + cfg_scale * (c - u)

    run.last_uncond = None
    return run


def run_pass(model: SDModel, plan: Any, x: torch.Tensor, cond_at: Callable[[int], tuple[Any, Any]],
             cfg_scale: float, height: int, width: int, callback: StepCallback, *,
             blend: MaskBlend | None = None, image_cond: torch.Tensor | None = None) -> PassResult:
    """Run every timestep of `plan` from `x` (already noised by `plan.start`).

    `cond_at(i)` gives (cond, uncond) for model call i (counted from 0 in each pass, as A1111 counts
    them), so prompt editing and alternation change the conditioning during sampling.
    `callback(step, x, denoised)` runs after every step. `blend` (inpainting) adjusts each call's input
    and guided output; `image_cond` goes to the UNet with every call (see `guided_model`)."""
    scheduler = plan.scheduler
    needs_uncond = getattr(scheduler, "needs_uncond", False)  # DDIM CFG++
    guided = guided_model(model, cfg_scale * getattr(scheduler, "cfg_multiplier", 1.0), height, width,
                          keep_uncond=needs_uncond, image_cond=image_cond)
    denoised: torch.Tensor | None = None
    calls = 0
    # The UNet gets its timesteps from one upfront copy: a per-step host-to-device copy of a scalar would
    # synchronise the stream every step and stall the GPU while the next step's kernels are launched.
    unet_timesteps = plan.timesteps.to(model.device)
    with torch.inference_mode():
        for i, t in enumerate(plan.timesteps):
            step = plan.user_step(i)
            cond, uncond = cond_at(i)
            x_in = scheduler.scale_model_input(x, t)
            if blend is not None:
                x_in = blend.before(x_in, i)
            out = guided(x_in, unet_timesteps[i], cond, uncond)
            if blend is not None:
                out = blend.after(out, x_in, i)
            calls += 1
            extra = {"uncond": guided.last_uncond} if needs_uncond else {}
            res = scheduler.step(out, t, x, **plan.step_kwargs, **extra, return_dict=True)
            x = res.prev_sample
            denoised = getattr(res, "pred_original_sample", None)
            if denoised is None:
                denoised = getattr(res, "denoised", None)
            try:
                callback(step, x, denoised)
            except STOPS as exc:  # the callback stops the pass by raising; anything else is a real error
                return PassResult(denoised if denoised is not None else x, exc, calls)
    return PassResult(x, None, calls)
