"""Seeded Brownian-tree noise, as A1111 gives its `brownian_noise` samplers, made device-independent.

A1111 seeds one Brownian tree per image with that image's seed, spanning the sampled noise levels,
and asks it for the (normalised) increment between two noise levels at each step. The trees here
always live on the CPU in float32, so a seed gives the same noise on any device.
"""
from __future__ import annotations

import torch
from diffusers import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler


class CPUBrownianNoise:
    """noise(sigma, sigma_next) -> a standard-normal tensor shaped like `shape`, one tree per seed."""

    def __init__(self, shape: tuple[int, ...], sigma_min: float, sigma_max: float, seeds: list[int]) -> None:
        if len(seeds) != shape[0]:
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for a batch of {shape[0]}")
        template = torch.zeros(shape, dtype=torch.float32)
        self._sampler = BrownianTreeNoiseSampler(template, float(sigma_min), float(sigma_max), [int(s) for s in seeds])
        self._range = (float(sigma_min), float(sigma_max))
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        lo, hi = self._range  # float32 round trips can land a hair outside the tree's span
        clamp = lambda v: torch.as_tensor(min(max(float(v), lo), hi))
        noise = self._sampler(clamp(sigma), clamp(sigma_next))
        if self.device is not None:
            noise = noise.to(self.device, self.dtype)
        return noise


class BrownianDPMSolverMultistepScheduler(DPMSolverMultistepScheduler):
    """diffusers' DPMSolverMultistepScheduler, with two changes that make it k-diffusion's DPM++ 2M/3M SDE:

    - when `noise_sampler` is set, the SDE noise of each step is the Brownian increment between
      the step's two noise levels (k-diffusion's `BrownianTreeNoiseSampler`), not fresh Gaussian noise;
    - the third-order SDE update uses k-diffusion's `phi_3` coefficient for the second difference.
    """

    noise_sampler: CPUBrownianNoise | None = None

    def step(self, model_output, timestep, sample, generator=None, variance_noise=None, return_dict=True):
        if (variance_noise is None and self.noise_sampler is not None
                and self.config.algorithm_type in ("sde-dpmsolver", "sde-dpmsolver++")):
            index = self.step_index if self.step_index is not None else (self.begin_index or 0)
            sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
            if float(sigma_next) > 0:
                variance_noise = self.noise_sampler(sigma, sigma_next).to(model_output.device)
            else:
                variance_noise = torch.zeros_like(model_output)
        return super().step(model_output, timestep, sample, generator=generator,
                            variance_noise=variance_noise, return_dict=return_dict)

    def multistep_dpm_solver_third_order_update(self, model_output_list, *args, sample=None, noise=None, **kwargs):
        if self.config.algorithm_type != "sde-dpmsolver++":
            return super().multistep_dpm_solver_third_order_update(
                model_output_list, *args, sample=sample, noise=noise, **kwargs)
        i = self.step_index
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(self.sigmas[i + 1])
        levels = [self._sigma_to_alpha_sigma_t(self.sigmas[i - k]) for k in range(3)]
        lam_t = torch.log(alpha_t) - torch.log(sigma_t)
        lam = [torch.log(a) - torch.log(s) for a, s in levels]
        h, h_0, h_1 = lam_t - lam[0], lam[0] - lam[1], lam[1] - lam[2]
        r0, r1 = h_0 / h, h_1 / h
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        h_eta = 2.0 * h  # eta = 1
        phi_2 = torch.expm1(-h_eta) / h_eta + 1.0
        phi_3 = phi_2 / h_eta - 0.5
        sigma_s0 = levels[0][1]
        return (
            (sigma_t / sigma_s0 * torch.exp(-h)) * sample
            + alpha_t * (-torch.expm1(-h_eta)) * m0
            + alpha_t * phi_2 * d1
            - alpha_t * phi_3 * d2
            + sigma_t * torch.sqrt(-torch.expm1(-h_eta)) * noise
        )
