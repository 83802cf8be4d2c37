"""Restart: A1111's `restart_sampler` (sd_samplers_extra.py, from "Restart Sampling for Improving
Generative Processes", 2023), which no diffusers scheduler performs.

The sampler is Heun's method (no churn) over a list of (sigma, sigma_next) steps. With 20 or more steps it
restarts: the schedule is rebuilt as Karras over steps - k * n levels between the given schedule's
largest and smallest non-zero sigma, where k restart segments of n steps each (k = 1, n = 9; from 36 steps
k = 2, n = steps // 4) climb back from the level nearest 0.1 to the level nearest 2 and descend again on a
Karras ramp of n + 1 levels. Before each climb x gets fresh noise of size sqrt(sigma_top^2 - sigma_last^2),
from the per-image generators. Below 20 steps it is plain Heun over the given schedule. A1111 passes it no
sampler parameters (s_noise is 1), and Automatic means Karras.

The scheduler is driven by a call list built in advance (`install`): per Heun step one call at sigma and,
unless sigma_next is 0, one at sigma_next.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from .calllist import Call, CallListScheduler
from .schedules import karras_between


def restart_steps(sigmas: np.ndarray) -> tuple[list[tuple[float, float]], list[float]]:
    """The Heun steps A1111's restart sampler takes over `sigmas`, and before each the size of the noise it
    adds (0 for none)."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    n = len(sigmas) - 1
    restart_at: dict[int, tuple[int, int, float]] = {}
    if n >= 20:
        seg_steps, times = (n // 4, 2) if n >= 36 else (9, 1)
        sigmas = karras_between(n - seg_steps * times, float(sigmas[-2]), float(sigmas[0]))
        restart_at = {int(np.argmin(np.abs(sigmas - 0.1))): (seg_steps + 1, times, 2.0)}
    steps: list[tuple[float, float]] = []
    for i in range(len(sigmas) - 1):
        steps.append((float(sigmas[i]), float(sigmas[i + 1])))
        if i + 1 in restart_at:
            levels, times, top = restart_at[i + 1]
            low, high = i + 1, int(np.argmin(np.abs(sigmas - top)))
            if high < low:
                ramp = karras_between(levels, float(sigmas[low]), float(sigmas[high]))[:-1]
                steps += list(zip(ramp[:-1].tolist(), ramp[1:].tolist())) * times
    noise: list[float] = []
    last = None
    for sigma, sigma_next in steps:
        noise.append(math.sqrt(sigma * sigma - last * last) if last is not None and last < sigma else 0.0)
        last = sigma_next
    return steps, noise


class RestartScheduler(CallListScheduler):
    """Drives `restart_sampler` one model call at a time; noise from the generators passed to `step`."""

    def install(self, sigmas: np.ndarray, values: Mapping[str, float] | None = None) -> list[Call]:
        self.heun_steps, self.renoise = restart_steps(sigmas)
        self.calls = []
        for j, (sigma, sigma_next) in enumerate(self.heun_steps):
            self.calls.append(Call(j, 0, sigma))
            if sigma_next > 0:
                self.calls.append(Call(j, 1, sigma_next))
        self.num_inference_steps = len(self.heun_steps)
        self._call = 0
        self._held: tuple[torch.Tensor, torch.Tensor] | None = None
        return self.calls

    def _advance(self, call: Call, sample: torch.Tensor, den: torch.Tensor, generator) -> torch.Tensor:
        j = call.step
        sigma, sigma_next = self.heun_steps[j]
        d = (sample - den) / call.sigma
        if call.stage == 0 and sigma_next > 0:  # Heun's predictor; the corrector comes with the next call
            self._held = (sample, d)
            return sample + d * (sigma_next - sigma)
        if call.stage == 0:  # to sigma 0: one Euler step
            x = sample + d * (sigma_next - sigma)
        else:
            start, d_first = self._held
            self._held = None
            x = start + (d_first + d) / 2 * (sigma_next - sigma)
        if j + 1 < len(self.heun_steps) and self.renoise[j + 1] > 0:  # a restart climbs back up
            x = x + self._noise_like(x, generator) * self.renoise[j + 1]
        return x
