"""DPM++ 2S a: k-diffusion's `sample_dpmpp_2s_ancestral`, which no diffusers scheduler performs.

Each step from sigma to sigma_next first takes k-diffusion's ancestral split (`ancestral_step`): a
deterministic move to sigma_down, then fresh noise of size sigma_up (scaled by s_noise) when sigma_next > 0.
The move is DPM-Solver++(2S), a single-step second-order exponential integrator in t = -log(sigma):

    denoised   = D(x, sigma)
    sigma_mid  = sqrt(sigma * sigma_down)                          (t halfway to t_down)
    x_mid      = denoised + (sigma_mid / sigma) * (x - denoised)
    denoised_2 = D(x_mid, sigma_mid)
    x          = denoised_2 + (sigma_down / sigma) * (x - denoised_2)

When sigma_down is 0 (the last step, or eta above 1 anywhere) the step is one Euler step with one model call.
The scheduler is therefore driven by a call list built in advance (`install`): which step each model call
belongs to, at which noise level, and whether it is the step's first or second stage.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from .ancestral import ancestral_step
from .calllist import Call, CallListScheduler


def plan_calls(sigmas: np.ndarray, eta: float) -> tuple[list[Call], list[float], list[float]]:
    """The model calls of a whole pass, and each step's (sigma_down, sigma_up)."""
    calls: list[Call] = []
    downs: list[float] = []
    ups: list[float] = []
    for i in range(len(sigmas) - 1):
        sigma, nxt = float(sigmas[i]), float(sigmas[i + 1])
        down, up = ancestral_step(sigma, nxt, eta)
        downs.append(down)
        ups.append(up)
        calls.append(Call(i, 0, sigma))
        if down > 0:
            calls.append(Call(i, 1, math.sqrt(sigma * down)))
    return calls, downs, ups


class DPMPP2SAncestralScheduler(CallListScheduler):
    """Drives `sample_dpmpp_2s_ancestral` one model call at a time. Configured by `install`; `eta` and
    `s_noise` are fixed there. Noise comes from the per-image generators passed to `step`."""

    def install(self, sigmas: np.ndarray, values: Mapping[str, float]) -> list[Call]:
        self.calls, self.downs, self.ups = plan_calls(sigmas, values["eta"])
        self.step_sigmas = [float(s) for s in sigmas]
        self.s_noise = values["s_noise"]
        self.num_inference_steps = len(sigmas) - 1
        self._call = 0
        self._step_start: torch.Tensor | None = None
        return self.calls

    def _advance(self, call: Call, sample: torch.Tensor, den: torch.Tensor, generator) -> torch.Tensor:
        i = call.step
        sigma, down = self.step_sigmas[i], self.downs[i]
        if call.stage == 0 and down > 0:  # first stage: to the midpoint; the step ends at the next call
            self._step_start = sample
            return den + math.sqrt(down / sigma) * (sample - den)  # sigma_mid / sigma
        if call.stage == 0:  # sigma_down 0: one Euler step
            x = sample + (sample - den) / sigma * (down - sigma)
        else:
            x = den + (down / sigma) * (self._step_start - den)
            self._step_start = None
        if self.step_sigmas[i + 1] > 0:
            x = x + self._noise_like(x, generator) * self.s_noise * self.ups[i]
        return x
