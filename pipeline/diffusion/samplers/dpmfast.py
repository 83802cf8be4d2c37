"""DPM fast: k-diffusion's `sample_dpm_fast` (DPM-Solver with fixed steps), which no diffusers scheduler runs.

The pass is spent as n model evaluations (n = the step count) in t = -log(sigma): m = n // 3 + 1 equal
steps from sigma_max to sigma_min of orders 3, ..., 3 then 2 and 1 (n divisible by 3) or n % 3. An order-k
step evaluates the model at t, and for k >= 2 at t + h/2 (order 2) or t + h/3 and t + 2h/3 (order 3), and
lands with DPM-Solver's exponential-integrator update. With eta (A1111 passes its `eta_ancestral`, 1, when
the request has none) each step first aims at k-diffusion's sigma_down (capped at sigma_min) and then adds
noise of size sqrt(sigma_next^2 - sigma_down^2) * s_noise from the per-image generators. The pass ends at
sigma_min, not 0, as in k-diffusion. The schedule type does not shape the steps: as in A1111, a txt2img pass
spans the model's whole sigma range and a denoising pass the range of its schedule tail.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from .ancestral import ancestral_step
from .calllist import Call, CallListScheduler

_NODES = {1: (), 2: (0.5,), 3: (1 / 3, 2 / 3)}  # DPM-Solver's intermediate points r * h per order


def plan_steps(n: int, sigma_min: float, sigma_max: float, eta: float) -> list[tuple[int, float, float, float]]:
    """(order, t, t_target, noise_size) of every solver step: the step runs from t to t_target, then noise
    of noise_size brings it back up to the grid level."""
    m = n // 3 + 1
    t_start, t_end = -math.log(sigma_max), -math.log(sigma_min)
    ts = np.linspace(t_start, t_end, m + 1)
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    steps = []
    for i, order in enumerate(orders):
        t, t_next = float(ts[i]), float(ts[i + 1])
        target, up = t_next, 0.0
        if eta:
            down, _ = ancestral_step(math.exp(-t), math.exp(-t_next), eta)
            target = min(t_end, -math.log(down)) if down > 0 else t_end
            up = math.sqrt(max(math.exp(-2 * t_next) - math.exp(-2 * target), 0.0))
        steps.append((order, t, target, up))
    return steps


class DPMFastScheduler(CallListScheduler):
    """Drives `sample_dpm_fast` one model call at a time. `values` carries eta, s_noise and sigma_range."""

    def install(self, sigmas: np.ndarray, values: Mapping[str, float]) -> list[Call]:
        sigma_min, sigma_max = values["sigma_range"]
        self.eta = values["eta"]
        self.s_noise = values["s_noise"]
        self.solver_steps = plan_steps(len(sigmas) - 1, sigma_min, sigma_max, self.eta)
        self.calls = []
        for j, (order, t, target, _) in enumerate(self.solver_steps):
            for stage, r in enumerate((0.0, *_NODES[order])):
                self.calls.append(Call(j, stage, math.exp(-(t + r * (target - t)))))
        self.num_inference_steps = len(self.calls)
        self._call = 0
        self._x: torch.Tensor | None = None
        self._eps: list[torch.Tensor] = []
        return self.calls

    def user_steps(self) -> list[int]:
        """One per evaluation: the request's steps are DPM fast's evaluations."""
        return list(range(1, len(self.calls) + 1))

    def _advance(self, call: Call, sample: torch.Tensor, den: torch.Tensor, generator) -> torch.Tensor:
        order, t, target, up = self.solver_steps[call.step]
        if call.stage == 0:
            self._x, self._eps = sample, []
        x = self._x
        self._eps.append((sample - den) / call.sigma)
        h = target - t
        sig = lambda tt: math.exp(-tt)
        eps = self._eps
        if call.stage + 1 < order:  # the next evaluation point
            r1 = _NODES[order][0]
            if call.stage == 0:
                return x - sig(t + r1 * h) * math.expm1(r1 * h) * eps[0]
            r2 = _NODES[order][1]
            return (x - sig(t + r2 * h) * math.expm1(r2 * h) * eps[0]
                    - sig(t + r2 * h) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps[1] - eps[0]))
        out = x - sig(target) * math.expm1(h) * eps[0]
        if order == 2:
            out = out - sig(target) / (2 * _NODES[2][0]) * math.expm1(h) * (eps[1] - eps[0])
        elif order == 3:
            out = out - sig(target) / _NODES[3][1] * (math.expm1(h) / h - 1) * (eps[2] - eps[0])
        if self.eta:
            out = out + self._noise_like(out, generator) * up * self.s_noise
        self._x, self._eps = None, []
        return out
