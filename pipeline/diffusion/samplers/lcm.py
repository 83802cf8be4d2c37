"""A1111's LCM sampler as a diffusers scheduler.

A1111 v1.10 runs LCM as a k-diffusion sampler over its own denoiser (`LCMCompVisDenoiser`):

    for each noise level sigma_i of the schedule:
        t_i      = the LCM timestep (19, 39, ..., 999) nearest to sigma_i        # what the UNet sees
        eps      = UNet(x / sqrt(sigma_i^2 + 1), t_i)
        x0       = x - sigma_i * eps                                              # at the unsnapped sigma
        denoised = c_out(t_i) * x0 + c_skip(t_i) * x                              # LCM boundary condition
        x        = denoised + sigma_{i+1} * noise   (noise only while sigma_{i+1} > 0)

with c_skip = s^2 / ((10 t)^2 + s^2), c_out = 10 t / sqrt((10 t)^2 + s^2), s = 0.5 (sigma_data), x in
k-diffusion's variance-exploding form, and the noise drawn from the per-image generators as for Euler a.
The noise levels come from `LCMNoiseTable` (schedules.py); the plan lays them into this scheduler.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import LCMScheduler
from diffusers.utils import BaseOutput

from pipeline.diffusion.seeds import step_noise


@dataclass
class LCMStepOutput(BaseOutput):
    """prev_sample: x at the next noise level; pred_original_sample: the step's denoised estimate."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class A1111LCMScheduler(LCMScheduler):
    """diffusers' LCMScheduler (its config: betas, `original_inference_steps`, `timestep_scaling`) stepping
    as A1111's LCM sampler. Its state is laid in by the plan instead of `set_timesteps`:

    sigmas: the k-diffusion noise levels run, ending with the level the last step goes to;
    unet_timesteps: the snapped LCM timestep of each step (the UNet's timestep and the boundary condition's).
    The sample it steps is k-diffusion's x (variance exploding), as for the Euler-family schedulers.
    """

    sigmas: torch.Tensor
    unet_timesteps: torch.Tensor

    def install(self, sigmas: torch.Tensor, unet_timesteps: torch.Tensor) -> None:
        self.sigmas = sigmas
        self.unet_timesteps = unet_timesteps
        self.timesteps = unet_timesteps
        self.num_inference_steps = len(unet_timesteps)
        self._step_index = None
        self._begin_index = None

    def _index(self) -> int:
        if self._step_index is None:
            self._step_index = self._begin_index or 0
        return self._step_index

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        sigma = self.sigmas[self._index()]
        return sample / ((sigma**2 + 1) ** 0.5)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator=None, return_dict: bool = True):
        i = self._index()
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        sample = sample.to(torch.float32)
        if self.config.prediction_type == "epsilon":
            x0 = sample - sigma * model_output
        elif self.config.prediction_type == "v_prediction":
            x0 = sample / (sigma**2 + 1) - model_output * (sigma / (sigma**2 + 1) ** 0.5)
        else:
            raise ValueError(f"prediction_type {self.config.prediction_type!r} is not supported by the LCM sampler")
        c_skip, c_out = self.get_scalings_for_boundary_condition_discrete(self.unet_timesteps[i])
        denoised = c_out * x0 + c_skip * sample
        prev_sample = denoised
        if sigma_next > 0:
            noise = step_noise(generator, model_output.shape, model_output.device, model_output.dtype)
            prev_sample = prev_sample + sigma_next * noise
        self._step_index = i + 1
        if not return_dict:
            return prev_sample, denoised
        return LCMStepOutput(prev_sample=prev_sample, pred_original_sample=denoised)
