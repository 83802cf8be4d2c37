"""The base of our own k-diffusion schedulers (DPM++ 2S a, Restart): the sampler's whole sequence of model
calls is planned up front (`install` returns it), and `step` takes one call at a time.

The sampling loop sees an ordinary diffusers scheduler: `scale_model_input` scales by the noise level of the
coming call, `step` returns the next sample to evaluate (a stage's intermediate or a finished step) and the
denoised estimate for previews and interrupts."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput

from pipeline.diffusion.seeds import step_noise

from .ancestral import denoised_estimate


@dataclass(frozen=True)
class Call:
    step: int  # index of the step it belongs to
    stage: int  # 0: the step's first call; 1: its second
    sigma: float  # the noise level the model sees


class CallListScheduler(EulerDiscreteScheduler):
    """Subclasses set `self.calls` in `install` and implement `_advance(call, sample, denoised, generator)`."""

    calls: list[Call]
    _call: int = 0

    def user_steps(self) -> list[int]:
        """The 1-based step (as progress reports it) of each call: by default the step it belongs to."""
        return [c.step + 1 for c in self.calls]

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._call = begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        sigma = self.calls[self._call].sigma
        return sample / math.sqrt(sigma * sigma + 1.0)

    def step(self, model_output, timestep, sample, generator=None, return_dict=True):
        call = self.calls[self._call]
        self._call += 1
        sample = sample.to(torch.float32)
        den = denoised_estimate(self, model_output.float(), sample, call.sigma)
        out = self._advance(call, sample, den, generator).to(model_output.dtype)
        if not return_dict:
            return out, den
        return EulerDiscreteSchedulerOutput(prev_sample=out, pred_original_sample=den)

    def _advance(self, call: Call, sample: torch.Tensor, den: torch.Tensor, generator) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _noise_like(x: torch.Tensor, generator) -> torch.Tensor:
        """Fresh noise from the per-image generators (one per batch item), as A1111's sampler noise."""
        return step_noise(generator, x.shape, x.device, x.dtype)
