"""A1111's DDIM, DDIM CFG++ and PLMS on its own timestep grid, each step going to the grid point just below.

diffusers' DDIM and PNDM steps assume a constant stride (t_prev = t - 1000 // steps). A1111's grid is
`range(0, 1000, 1000 // steps) + 1` clipped to 999, so for 3, 9, 27, 37, ... steps the top interval is one
shorter than the rest: the stride rule then lands beside A1111's point (DDIM) or past the table's end (PLMS
recovers t + stride = 1000 and fails). These schedulers take the target of every model call explicitly.

All three read the model output as epsilon; a v-prediction output is converted at its own call's timestep and
sample, as A1111's v denoiser does.
"""
from __future__ import annotations

import math

import torch
from diffusers import DDIMScheduler, PNDMScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

from pipeline.diffusion.seeds import step_noise


def _eps_and_x0(sched, model_output: torch.Tensor, sample: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = float(sched.alphas_cumprod[t])
    if sched.config.prediction_type == "v_prediction":
        eps = math.sqrt(a) * model_output + math.sqrt(1 - a) * sample
    elif sched.config.prediction_type == "epsilon":
        eps = model_output
    else:
        raise ValueError(f"prediction_type {sched.config.prediction_type!r} is not supported")
    return eps, (sample - math.sqrt(1 - a) * eps) / math.sqrt(a)


def _towards(sched, x0: torch.Tensor, eps: torch.Tensor, t_prev: int) -> torch.Tensor:
    ap = float(sched.alphas_cumprod[t_prev])
    return math.sqrt(ap) * x0 + math.sqrt(1 - ap) * eps


class A1111DDIMScheduler(DDIMScheduler):
    """DDIM with eta (noise from the per-image generators) from each evaluated timestep to its given target."""

    def install(self, timesteps: list[int], targets: list[int]) -> None:
        self.timesteps = torch.tensor(timesteps, dtype=torch.long)
        self.num_inference_steps = len(timesteps)
        self._targets = list(targets)
        self._call = 0

    def step(self, model_output, timestep, sample, eta: float = 0.0, generator=None, return_dict=True,
             uncond=None, **_):
        t, t_prev = int(timestep), self._targets[self._call]
        self._call += 1
        sample = sample.float()
        eps, x0 = _eps_and_x0(self, model_output.float(), sample, t)
        direction = eps if uncond is None else _eps_and_x0(self, uncond.float(), sample, t)[0]
        a, ap = float(self.alphas_cumprod[t]), float(self.alphas_cumprod[t_prev])
        sigma = eta * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap)) if eta else 0.0
        x = math.sqrt(ap) * x0 + math.sqrt(max(1 - ap - sigma * sigma, 0.0)) * direction
        if sigma > 0:
            x = x + sigma * step_noise(generator, x.shape, x.device, x.dtype)
        if not return_dict:
            return x, x0
        return DDIMSchedulerOutput(prev_sample=x, pred_original_sample=x0)


class A1111DDIMCFGppScheduler(A1111DDIMScheduler):
    """A1111's DDIM CFG++ (ddim_cfgpp, after "CFG++: Manifold-constrained Classifier Free Guidance", 2024):
    the guidance scale is cfg_scale / 12.5 (`cfg_multiplier`), x0 comes from the guided noise as in DDIM, and
    the step re-noises along the *unconditional* noise prediction, which the sampling loop passes to `step`
    as `uncond` because `needs_uncond` is set."""

    needs_uncond = True
    cfg_multiplier = 1 / 12.5

    def step(self, model_output, timestep, sample, eta: float = 0.0, generator=None, return_dict=True,
             uncond=None, **kw):
        if uncond is None:
            raise ValueError("DDIM CFG++ needs the unconditional model output of every step (uncond=...)")
        return super().step(model_output, timestep, sample, eta, generator, return_dict, uncond=uncond, **kw)


class A1111PLMSScheduler(PNDMScheduler):
    """PLMS as A1111 runs it: the first step is improved Euler (a second call at the step's target), the next
    ones Adams-Bashforth of order 2, 3, then 4 over the previous model outputs."""

    def install(self, transitions: list[int], targets: list[int]) -> list[int]:
        """`transitions`: the evaluated timesteps, descending; `targets[i]`: where step i lands. Returns the
        timesteps of every model call (the first step calls twice)."""
        self._steps = list(zip(transitions, targets))
        self._call, self._old = 0, []
        self._start: torch.Tensor | None = None
        calls = [transitions[0], targets[0], *transitions[1:]]
        self.timesteps = torch.tensor(calls, dtype=torch.long)
        self.num_inference_steps = len(transitions)
        return calls

    def step(self, model_output, timestep, sample, return_dict=True, **_):
        k = self._call
        self._call += 1
        sample = sample.float()
        if k == 0:  # improved Euler, first half: to the target with this output, called again there
            t, t_prev = self._steps[0]
            eps, x0 = _eps_and_x0(self, model_output.float(), sample, t)
            self._start, self._old = sample, [eps]
            x = _towards(self, x0, eps, t_prev)
        else:
            t, t_prev = self._steps[k - 1]
            start = self._start if k == 1 else sample
            eps, _ = _eps_and_x0(self, model_output.float(), sample, int(timestep))
            old = self._old
            if k == 1:
                e = (old[0] + eps) / 2
                self._old = [old[0]]  # A1111 keeps the first step's own output, not the corrector's
            else:
                if len(old) == 1:
                    e = (3 * eps - old[-1]) / 2
                elif len(old) == 2:
                    e = (23 * eps - 16 * old[-1] + 5 * old[-2]) / 12
                else:
                    e = (55 * eps - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
                self._old = (old + [eps])[-3:]
            a = float(self.alphas_cumprod[t])
            x0 = (start - math.sqrt(1 - a) * e) / math.sqrt(a)
            x = _towards(self, x0, e, t_prev)
            self._start = None
        if not return_dict:
            return x, x0
        return DDIMSchedulerOutput(prev_sample=x, pred_original_sample=x0)
