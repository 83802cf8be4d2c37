"""Ancestral steps with k-diffusion's `eta` (and `s_noise`), for the diffusers schedulers that fix eta at 1.

k-diffusion splits a step from sigma to sigma_next into a deterministic move down to sigma_down and fresh
noise of size sigma_up (`get_ancestral_step`):

    sigma_up   = min(sigma_next, eta * sqrt(sigma_next^2 * (sigma^2 - sigma_next^2) / sigma^2))
    sigma_down = sqrt(sigma_next^2 - sigma_up^2)

eta 0 gives sigma_down = sigma_next and no noise (a deterministic sampler); eta 1 is the diffusers step.
"""
from __future__ import annotations

import math

import torch
from diffusers import DPMSolverSDEScheduler, EulerAncestralDiscreteScheduler, KDPM2AncestralDiscreteScheduler
from diffusers.schedulers.scheduling_dpmsolver_sde import (
    BrownianTreeNoiseSampler,
    DPMSolverSDESchedulerOutput,
)
from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete import KDPM2AncestralDiscreteSchedulerOutput

from pipeline.diffusion.seeds import step_noise


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """k-diffusion's `get_ancestral_step`: (sigma_down, sigma_up)."""
    if not eta:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(max(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2, 0.0)))
    return math.sqrt(max(sigma_next**2 - up**2, 0.0)), up


def denoised_estimate(scheduler, model_output: torch.Tensor, sample: torch.Tensor, sigma) -> torch.Tensor:
    if scheduler.config.prediction_type == "epsilon":
        return sample - sigma * model_output
    if scheduler.config.prediction_type == "v_prediction":
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
    raise ValueError(f"prediction_type {scheduler.config.prediction_type!r} is not supported")


class EtaEulerAncestralScheduler(EulerAncestralDiscreteScheduler):
    """diffusers' Euler a stepping as k-diffusion's `sample_euler_ancestral` with any `eta` (attribute, default 1).

    Noise is drawn only while sigma_next > 0, as in k-diffusion. A1111 v1.10 passes no `s_noise` to Euler a.
    """

    eta: float = 1.0

    def step(self, model_output, timestep, sample, generator=None, return_dict=True):
        if self.step_index is None:
            self._init_step_index(timestep)
        i = self.step_index
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        sample = sample.to(torch.float32)
        x0 = denoised_estimate(self, model_output, sample, sigma)
        down, up = ancestral_step(float(sigma), float(sigma_next), self.eta)
        prev_sample = sample + (sample - x0) / sigma * (down - sigma)
        if float(sigma_next) > 0:
            noise = step_noise(generator, model_output.shape, model_output.device, model_output.dtype)
            prev_sample = prev_sample + noise * up
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return prev_sample, x0
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


class EtaDPMSolverSDEScheduler(DPMSolverSDEScheduler):
    """diffusers' DPM++ SDE stepping as k-diffusion's `sample_dpmpp_sde` (r = 1/2) with any `eta` and `s_noise`
    (attributes, default 1): both stages take an ancestral step with that eta, the noise scaled by s_noise."""

    eta: float = 1.0
    s_noise: float = 1.0

    def step(self, model_output, timestep, sample, return_dict=True, s_noise=None):
        if self.step_index is None:
            self._init_step_index(timestep)
        if self.noise_sampler is None:
            lo, hi = self.sigmas[self.sigmas > 0].min(), self.sigmas.max()
            self.noise_sampler = BrownianTreeNoiseSampler(sample, lo.item(), hi.item(), self.noise_sampler_seed)
        s_noise = self.s_noise if s_noise is None else s_noise
        sigma_fn = lambda t: t.neg().exp()  # k-diffusion's names
        t_fn = lambda s: s.log().neg()
        first = self.state_in_first_order
        i = self.step_index
        sigma, sigma_next = (self.sigmas[i], self.sigmas[i + 1]) if first else (self.sigmas[i - 1], self.sigmas[i])
        t, t_next = t_fn(sigma), t_fn(sigma_next)
        t_mid = t + (t_next - t) * 0.5
        x0 = denoised_estimate(self, model_output, sample, sigma if first else sigma_fn(t_mid))
        if sigma_next == 0:  # the last step: Euler to 0
            prev_sample = sample + (sample - x0) / sigma * (sigma_next - sigma)
        else:
            target = t_mid if first else t_next
            start = sample if first else self.sample
            sigma_from, sigma_to = sigma_fn(t), sigma_fn(target)
            down, up = ancestral_step(float(sigma_from), float(sigma_to), self.eta)
            t_down = t_fn(torch.tensor(down, dtype=sigma_from.dtype))
            prev_sample = (sigma_fn(t_down) / sigma_from) * start - (t - t_down).expm1() * x0
            prev_sample = prev_sample + self.noise_sampler(sigma_from, sigma_to) * s_noise * up
            if first:
                self.sample, self.mid_point_sigma = start, sigma_to
            else:
                self.sample, self.mid_point_sigma = None, None
        self._step_index += 1
        if not return_dict:
            return prev_sample, x0
        return DPMSolverSDESchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


class A1111KDPM2AncestralScheduler(KDPM2AncestralDiscreteScheduler):
    """diffusers' DPM2 a stepping, its noise drawn from the pass's noise stream (seeds.step_noise: A1111's
    ImageRNG, any `randn_source`, ENSD). Stage one draws nothing; stage two completes the step from the stored
    sample with the midpoint's derivative and adds noise * sigma_up, as diffusers and k-diffusion do."""

    def step(self, model_output, timestep, sample, generator=None, return_dict=True):
        if self.step_index is None:
            self._init_step_index(timestep)
        if self.state_in_first_order:
            return super().step(model_output, timestep, sample, generator=None, return_dict=return_dict)
        k = self.step_index - 1
        sigma, mid = self.sigmas[k], self.sigmas_interpol[k]
        x0 = denoised_estimate(self, model_output, sample, mid)
        prev_sample = self.sample + (sample - x0) / mid * (self.sigmas_down[k] - sigma)
        self.sample = None
        noise = step_noise(generator, model_output.shape, model_output.device, model_output.dtype)
        prev_sample = prev_sample + noise * self.sigmas_up[k]
        self._step_index += 1
        if not return_dict:
            return prev_sample, x0
        return KDPM2AncestralDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
