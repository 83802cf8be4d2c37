"""Seeded Brownian-tree noise, as A1111 gives its `brownian_noise` samplers.

A1111 seeds one Brownian tree per image with that image's seed (never with the ENSD), spanning the sampled
noise levels, and asks it for the (normalised) increment between two noise levels at each step. The tree
is built on the device of the latent being sampled, in float32, whatever `randn_source` says (torchsde
draws it with that device's generator): on the CPU a seed gives the same noise on every machine, on a
CUDA device it gives what A1111 gives on that device.
"""
from __future__ import annotations

import torch
from diffusers import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler


def batch_tree_seed(seeds: list[int]) -> int:
    """The one tree seed A1111 ends up with under `no_dpmpp_sde_batch_determinism`: k-diffusion then seeds
    its tree with `torch.randint(0, 2**63 - 1)` from torch's global generator, which A1111's noise setup
    (modules/rng.py: `manual_seed` before each image's noise) last seeded with the batch's last seed (with
    `randn_source` GPU or CPU; with NV that generator is not reseeded, and its state is the process's)."""
    generator = torch.Generator().manual_seed(int(seeds[-1]) & (2**64 - 1))
    return int(torch.randint(0, 2**63 - 1, [], generator=generator).item())


class BrownianNoise:
    """noise(sigma, sigma_next) -> a standard-normal tensor shaped like `shape` on `device`: one tree per seed
    when `seeds` is a list (one per image), one tree over the whole batch when it is a single int."""

    def __init__(self, shape: tuple[int, ...], sigma_min: float, sigma_max: float, seeds: list[int] | int,
                 device: torch.device | str = "cpu") -> None:
        template = torch.zeros(shape, dtype=torch.float32, device=device)
        if isinstance(seeds, int):
            entropy: list[int] | int = seeds & (2**64 - 1)
        else:
            if len(seeds) != shape[0]:
                raise ValueError(f"need one seed per image: {len(seeds)} seeds for a batch of {shape[0]}")
            entropy = [int(s) & (2**64 - 1) for s in seeds]  # negative seeds read as torch reads them
        self._sampler = BrownianTreeNoiseSampler(template, float(sigma_min), float(sigma_max), entropy)
        self._range = (float(sigma_min), float(sigma_max))

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        lo, hi = self._range  # float32 round trips can land a hair outside the tree's span
        clamp = lambda v: torch.as_tensor(min(max(float(v), lo), hi))
        return self._sampler(clamp(sigma), clamp(sigma_next))


class BrownianDPMSolverMultistepScheduler(DPMSolverMultistepScheduler):
    """diffusers' DPMSolverMultistepScheduler, with changes that make it k-diffusion's DPM++ 2M/3M SDE:

    - when `noise_sampler` is set, the SDE noise of each step is the Brownian increment between
      the step's two noise levels (k-diffusion's `BrownianTreeNoiseSampler`), not fresh Gaussian noise;
    - the SDE updates take k-diffusion's `eta` and `s_noise` (attributes, default 1; diffusers fixes
      both at 1), and the third-order update uses k-diffusion's `phi_3` coefficient for the second difference.

    With eta = 1 the SDE updates are diffusers' own. In k-diffusion's variance-exploding terms, with
    h = log(sigma / sigma_next) and h_eta = (1 + eta) h, one step is

        x_next = sigma_next / sigma * exp(-eta h) * x + (1 - exp(-h_eta)) * D0 + (correction)
                 + sigma_next * sqrt(1 - exp(-2 eta h)) * s_noise * noise

    where the correction is 0.5 (1 - exp(-h_eta)) D1 (2M midpoint), phi_2 D1 (2M heun, 3M's second step)
    or phi_2 d1 - phi_3 d2 (3M), phi_2 = (1 - exp(-h_eta)) / -h_eta + 1, phi_3 = phi_2 / h_eta - 1/2.
    This scheduler works on x / sqrt(sigma^2 + 1) (alpha_t x), so every term is multiplied by alpha_t.
    """

    noise_sampler: BrownianNoise | None = None
    eta: float = 1.0
    s_noise: float = 1.0

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

    def _sde_terms(self, order: int):
        """(alpha_t, sigma_t / sigma_s0, h, lambdas of the earlier points) for the current step."""
        i = self.step_index
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(self.sigmas[i + 1])
        levels = [self._sigma_to_alpha_sigma_t(self.sigmas[i - k]) for k in range(order)]
        lam_t = torch.log(alpha_t) - torch.log(sigma_t)
        lam = [torch.log(a) - torch.log(s) for a, s in levels]
        return alpha_t, sigma_t, levels[0][1], lam_t - lam[0], lam

    def _sde_step(self, sample, m0, noise, order: int, correction) -> torch.Tensor:
        alpha_t, sigma_t, sigma_s0, h, lam = self._sde_terms(order)
        if float(sigma_t) == 0:  # the final step to sigma 0: x = denoised
            return m0
        eta = self.eta
        h_eta = (1.0 + eta) * h
        x = (sigma_t / sigma_s0 * torch.exp(-eta * h)) * sample + alpha_t * (-torch.expm1(-h_eta)) * m0
        if correction is not None:
            x = x + alpha_t * correction(h, h_eta, lam)
        if eta:
            x = x + sigma_t * torch.sqrt(-torch.expm1(-2.0 * eta * h)) * self.s_noise * noise
        return x

    def dpm_solver_first_order_update(self, model_output, *args, sample=None, noise=None, **kwargs):
        if self.config.algorithm_type != "sde-dpmsolver++":
            return super().dpm_solver_first_order_update(model_output, *args, sample=sample, noise=noise, **kwargs)
        return self._sde_step(sample, model_output, noise, 1, None)

    def multistep_dpm_solver_second_order_update(self, model_output_list, *args, sample=None, noise=None, **kwargs):
        if self.config.algorithm_type != "sde-dpmsolver++":
            return super().multistep_dpm_solver_second_order_update(
                model_output_list, *args, sample=sample, noise=noise, **kwargs)
        m0, m1 = model_output_list[-1], model_output_list[-2]

        def correction(h, h_eta, lam):
            d1 = (m0 - m1) * h / (lam[0] - lam[1])
            if self.config.solver_type == "heun":
                return (-torch.expm1(-h_eta) / -h_eta + 1.0) * d1
            return 0.5 * (-torch.expm1(-h_eta)) * d1

        return self._sde_step(sample, m0, noise, 2, correction)

    def multistep_dpm_solver_third_order_update(self, model_output_list, *args, sample=None, noise=None, **kwargs):
        if self.config.algorithm_type != "sde-dpmsolver++":
            return super().multistep_dpm_solver_third_order_update(
                model_output_list, *args, sample=sample, noise=noise, **kwargs)
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]

        def correction(h, h_eta, lam):
            r0, r1 = (lam[0] - lam[1]) / h, (lam[1] - lam[2]) / h
            d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_2 = torch.expm1(-h_eta) / h_eta + 1.0
            phi_3 = phi_2 / h_eta - 0.5
            return phi_2 * d1 - phi_3 * d2

        return self._sde_step(sample, m0, noise, 3, correction)
