"""k-diffusion's stochastic churn (Karras et al. 2022, Algorithm 2) for Euler, Heun and DPM2.

`sample_euler`, `sample_heun` and `sample_dpm_2` begin every step i (sigma_i -> sigma_{i+1}, of n) with

    gamma     = min(s_churn / n, sqrt(2) - 1)   if s_tmin <= sigma_i <= s_tmax, else 0
    eps       = randn_like(x) * s_noise           # drawn on every step, also where gamma is 0
    sigma_hat = sigma_i * (gamma + 1)
    x_hat     = x + eps * sqrt(sigma_hat^2 - sigma_i^2)   (only where gamma > 0)

and then take their usual step from (x_hat, sigma_hat) instead of (x, sigma_i): the model is called at
sigma_hat, and the step ends at sigma_{i+1} (DPM2's midpoint becomes sqrt(sigma_hat * sigma_{i+1})).

sigma_hat depends only on the schedule, so the plan lays it in up front (`churn_schedule`; the model
timesteps the plan runs are those of sigma_hat). What happens at run time is the noise: the schedulers
below draw eps in `scale_model_input`, before the model call, from the per-image generators, and their
`step` continues from the churned sample. A scheduler without a `churn` (s_churn 0) is exactly its diffusers
parent, and so is every step whose gamma is 0 (apart from the noise drawn there, as in k-diffusion).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler, HeunDiscreteScheduler, KDPM2DiscreteScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_heun_discrete import HeunDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_k_dpm_2_discrete import KDPM2DiscreteSchedulerOutput

from pipeline.diffusion.seeds import step_noise

from .ancestral import denoised_estimate


def churn_schedule(sigmas: np.ndarray, s_churn: float, s_tmin: float,
                   s_tmax: float) -> tuple[np.ndarray, np.ndarray]:
    """(sigma_hat, gamma) of every step of the k-diffusion schedule `sigmas` (n + 1 levels), in float32 as
    k-diffusion computes them: the window test compares the float32 sigma, sigma_hat is float32."""
    s32 = torch.as_tensor(np.asarray(sigmas[:-1]), dtype=torch.float32)
    n = len(sigmas) - 1
    gamma = np.array([min(s_churn / n, 2**0.5 - 1) if s_tmin <= v <= s_tmax else 0.0 for v in s32])
    hat = torch.stack([v * (g + 1.0) for v, g in zip(s32, gamma.tolist())]) if n else s32
    return hat.numpy().astype(np.float64), gamma


@dataclass
class Churn:
    """What a churning scheduler needs, per k-diffusion step k: sigmas (the n + 1 levels), sigmas_hat and
    gammas (n each); s_noise; generators: the pass's noise stream (seeds.ImageNoise) for eps."""

    sigmas: torch.Tensor
    sigmas_hat: torch.Tensor
    gammas: list[float]
    s_noise: float
    generators: Any
    _hat: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def sample_hat(self, k: int, sample: torch.Tensor) -> torch.Tensor:
        """x_hat of step k: eps is drawn once per step (a repeated call reuses it), before the model call."""
        if k not in self._hat:
            eps = step_noise(self.generators, sample.shape, sample.device, torch.float32) * self.s_noise
            x = sample.to(torch.float32)
            if self.gammas[k] > 0:
                sigma, hat = self.sigmas[k], self.sigmas_hat[k]
                x = x + eps * (hat**2 - sigma**2) ** 0.5
            self._hat = {k: x}
        return self._hat[k]


class _Churning:
    churn: Churn | None = None

    def _churn_step(self, timestep) -> int | None:
        """The k-diffusion step whose first model call comes next, or None (no churn, or a second stage)."""
        if self.churn is None:
            return None
        if self.step_index is None:
            self._init_step_index(timestep)
        if not self.state_in_first_order:
            return None
        return self.step_index // self._stages

    def _hat_input(self, k: int, sample: torch.Tensor) -> torch.Tensor:
        x_hat = self.churn.sample_hat(k, sample)
        return x_hat / ((self.churn.sigmas_hat[k] ** 2 + 1) ** 0.5)


class ChurnEulerScheduler(_Churning, EulerDiscreteScheduler):
    """diffusers' Euler stepping as k-diffusion's `sample_euler`, with its churn when `churn` is set."""

    _stages = 1

    @property
    def state_in_first_order(self) -> bool:
        return True

    def scale_model_input(self, sample, timestep):
        k = self._churn_step(timestep)
        if k is None or self.churn.gammas[k] == 0:
            if k is not None:
                self.churn.sample_hat(k, sample)  # k-diffusion draws eps on every step
            return super().scale_model_input(sample, timestep)
        self.is_scale_input_called = True
        return self._hat_input(k, sample)

    def step(self, model_output, timestep, sample, *args, generator=None, return_dict=True, **kwargs):
        k = self._churn_step(timestep)
        if k is None or self.churn.gammas[k] == 0:
            if k is not None:
                self.churn.sample_hat(k, sample)
            return super().step(model_output, timestep, sample, *args, generator=generator, return_dict=return_dict,
                                **kwargs)
        hat, sigma_next = self.churn.sigmas_hat[k], self.churn.sigmas[k + 1]
        x_hat = self.churn.sample_hat(k, sample)
        x0 = denoised_estimate(self, model_output, x_hat, hat)
        prev_sample = (x_hat + (x_hat - x0) / hat * (sigma_next - hat)).to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return prev_sample, x0
        return EulerDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


class ChurnHeunScheduler(_Churning, HeunDiscreteScheduler):
    """diffusers' Heun stepping as k-diffusion's `sample_heun`, with its churn when `churn` is set: the first
    stage starts from (x_hat, sigma_hat); the second stage (diffusers' own) then averages the two slopes over
    sigma_next - sigma_hat from x_hat, which the first stage leaves in the scheduler's state."""

    _stages = 2

    def scale_model_input(self, sample, timestep):
        k = self._churn_step(timestep)
        if k is None or self.churn.gammas[k] == 0:
            if k is not None:
                self.churn.sample_hat(k, sample)
            return super().scale_model_input(sample, timestep)
        return self._hat_input(k, sample)

    def step(self, model_output, timestep, sample, return_dict=True):
        k = self._churn_step(timestep)
        if k is None or self.churn.gammas[k] == 0:
            if k is not None:
                self.churn.sample_hat(k, sample)
            return super().step(model_output, timestep, sample, return_dict=return_dict)
        hat, sigma_next = self.churn.sigmas_hat[k], self.churn.sigmas[k + 1]
        x_hat = self.churn.sample_hat(k, sample)
        x0 = denoised_estimate(self, model_output, x_hat, hat)
        derivative = (x_hat - x0) / hat
        dt = sigma_next - hat
        self.prev_derivative, self.dt, self.sample = derivative, dt, x_hat  # what the second stage continues from
        prev_sample = x_hat + derivative * dt  # also the whole step when sigma_next is 0 (no second stage then)
        self._step_index += 1
        if not return_dict:
            return prev_sample, x0
        return HeunDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


class ChurnKDPM2Scheduler(_Churning, KDPM2DiscreteScheduler):
    """diffusers' KDPM2 stepping as k-diffusion's `sample_dpm_2`, with its churn when `churn` is set. The plan lays
    the churned midpoints sqrt(sigma_hat * sigma_next) into `sigmas_interpol`; both stages step from x_hat over
    sigma_hat (the diffusers step would use sigma)."""

    _stages = 2
    _churn_k: int | None = None  # the step whose second stage comes next

    def scale_model_input(self, sample, timestep):
        k = self._churn_step(timestep)
        if k is None or self.churn.gammas[k] == 0:
            if k is not None:
                self.churn.sample_hat(k, sample)
            return super().scale_model_input(sample, timestep)  # the second stage: at sigmas_interpol, as laid in
        return self._hat_input(k, sample)

    def step(self, model_output, timestep, sample, return_dict=True):
        k = self._churn_step(timestep)
        second = self.churn is not None and self._churn_k is not None and not self.state_in_first_order
        if second:
            k, self._churn_k = self._churn_k, None
        elif k is not None and self.churn.gammas[k] != 0:
            self._churn_k = k
        else:
            if k is not None:
                self.churn.sample_hat(k, sample)
            return super().step(model_output, timestep, sample, return_dict=return_dict)
        hat, sigma_next = self.churn.sigmas_hat[k], self.churn.sigmas[k + 1]
        if not second:
            x_hat = self.churn.sample_hat(k, sample)
            x0 = denoised_estimate(self, model_output, x_hat, hat)
            mid = self.sigmas_interpol[self.step_index + 1]  # 0 on a last step to sigma 0: an Euler step there
            prev_sample = x_hat + (x_hat - x0) / hat * (mid - hat)
            self.sample = x_hat
        else:
            mid = self.sigmas_interpol[self.step_index]
            x0 = denoised_estimate(self, model_output, sample, mid)
            prev_sample = self.sample + (sample - x0) / mid * (sigma_next - hat)
            self.sample = None
        self._step_index += 1
        if not return_dict:
            return prev_sample, x0
        return KDPM2DiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

