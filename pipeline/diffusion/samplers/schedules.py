"""A1111's schedule types (`/sdapi/v1/schedulers`) and the noise levels each one produces.

Every function here returns k-diffusion sigmas (variance-exploding noise levels, highest first) for
an `n`-step schedule, computed from the model's training noise schedule exactly as A1111 v1.10's
`sd_schedulers.py` does. `automatic` has no function: it means "the sampler's own default".
The model is seen through a `NoiseTable` (k-diffusion's DiscreteSchedule); LCM sees an `LCMNoiseTable`.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats


class NoiseTable:
    """The model's discrete noise levels, as k-diffusion's `DiscreteSchedule` sees them.

    `sigmas[k]` is the noise level of training timestep k (ascending); `t_to_sigma` and `sigma_to_t`
    interpolate linearly in log-sigma, giving the continuous timestep A1111 feeds to the UNet.
    """

    def __init__(self, alphas_cumprod, half: bool = False) -> None:
        acp = np.asarray(alphas_cumprod, dtype=np.float64)
        self.alphas_cumprod = acp
        if half:  # A1111's `use_downcasted_alpha_bar`: k-diffusion computes its table in float16 then
            a = torch.from_numpy(acp).half()
            sig = ((1 - a) / a) ** 0.5
            self.sigmas, self.log_sigmas = sig.double().numpy(), sig.log().double().numpy()
        else:
            self.sigmas = np.sqrt((1.0 - acp) / acp)
            self.log_sigmas = np.log(self.sigmas)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def t_to_sigma(self, t) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        low = np.floor(t).astype(np.int64)
        high = np.ceil(t).astype(np.int64)
        w = t - low
        return np.exp((1.0 - w) * self.log_sigmas[low] + w * self.log_sigmas[high])

    def sigma_to_t(self, sigma) -> np.ndarray:
        sigma = np.asarray(sigma, dtype=np.float64)
        log_sigma = np.log(np.maximum(sigma, 1e-10))
        dists = log_sigma[None, ...] - self.log_sigmas.reshape((-1,) + (1,) * log_sigma.ndim)
        low = np.clip(np.cumsum(dists >= 0, axis=0).argmax(axis=0), None, len(self.log_sigmas) - 2)
        lo, hi = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = np.clip((lo - log_sigma) / (lo - hi), 0.0, 1.0)
        return (1.0 - w) * low + w * (low + 1)

    def nearest_t(self, sigma) -> np.ndarray:
        """k-diffusion's quantized `sigma_to_t` (A1111's `enable_quantization`): the training timestep whose
        noise level is nearest in log-sigma (the first of equals)."""
        log_sigma = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-10))
        dists = np.abs(log_sigma[None, ...] - self.log_sigmas.reshape((-1,) + (1,) * log_sigma.ndim))
        return dists.argmin(axis=0).astype(np.float64)

    def discretisation(self, n: int) -> np.ndarray:
        """The model's own n-step schedule (k-diffusion `get_sigmas`): n timesteps evenly from 999 to 0, then 0."""
        return _append_zero(self.t_to_sigma(np.linspace(len(self.sigmas) - 1, 0, n)))


class LCMNoiseTable(NoiseTable):
    """A1111's LCM view of the model (its `LCMCompVisDenoiser`): only the `original_steps` (50) LCM timesteps exist.

    `sigmas` are the training noise levels at timesteps 19, 39, ..., 999; `sigma_to_t` snaps a noise level to
    the nearest of them (in log-sigma) and returns that integer timestep, which is what the UNet is called
    with; `t_to_sigma` interpolates in log-sigma between neighbouring LCM timesteps (clamped to 19..999).
    Its own discretisation spaces n timesteps evenly from 999 to 19 and does not quantise them, so a
    sampler re-noises to interpolated noise levels while the UNet sees the snapped timesteps. The
    schedule types see this table wherever A1111 hands them its `inner_model` (or its sigma range).
    """

    def __init__(self, alphas_cumprod, original_steps: int = 50, half: bool = False) -> None:
        full = np.asarray(alphas_cumprod, dtype=np.float64)
        self.skip = len(full) // original_steps
        self.timesteps = len(full) - 1 - self.skip * np.arange(original_steps)[::-1]  # 19, 39, ..., 999
        super().__init__(full[self.timesteps], half)

    def sigma_to_t(self, sigma) -> np.ndarray:
        log_sigma = np.log(np.asarray(sigma, dtype=np.float64))
        nearest = np.abs(log_sigma[None, ...] - self.log_sigmas.reshape((-1,) + (1,) * log_sigma.ndim)).argmin(axis=0)
        return (nearest * self.skip + (self.skip - 1)).astype(np.float64)

    def t_to_sigma(self, t) -> np.ndarray:
        k = np.clip((np.asarray(t, dtype=np.float64) - (self.skip - 1)) / self.skip, 0, len(self.sigmas) - 1)
        return super().t_to_sigma(k)

    def discretisation(self, n: int) -> np.ndarray:
        start, end = self.sigma_to_t(self.sigma_max), self.sigma_to_t(self.sigma_min)
        return _append_zero(self.t_to_sigma(np.linspace(start, end, n)))


def quantized(table: NoiseTable) -> NoiseTable:
    """`table` whose `sigma_to_t` snaps to the nearest training timestep, as k-diffusion's denoiser does with
    `quantize=True` (A1111's `enable_quantization`): what the schedule functions that convert noise levels
    to timesteps (Normal, SGM Uniform) see then. `t_to_sigma` still interpolates."""
    cls = type(f"Quantized{type(table).__name__}", (type(table),), {"sigma_to_t": NoiseTable.nearest_t})
    view = cls.__new__(cls)
    view.__dict__.update(table.__dict__)
    return view


def _append_zero(sigmas) -> np.ndarray:
    return np.concatenate([np.asarray(sigmas, dtype=np.float64), [0.0]])


def uniform(n: int, tab: NoiseTable, family: str) -> np.ndarray:
    """The model's own discretisation (k-diffusion `get_sigmas`): n timesteps evenly from 999 to 0."""
    return tab.discretisation(n)


def karras_between(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """k-diffusion's `get_sigmas_karras`: n levels from sigma_max down to sigma_min, then 0."""
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def karras(n: int, tab: NoiseTable, family: str, rho: float = 7.0) -> np.ndarray:
    return karras_between(n, tab.sigma_min, tab.sigma_max, rho)


def exponential(n: int, tab: NoiseTable, family: str) -> np.ndarray:
    return _append_zero(np.exp(np.linspace(np.log(tab.sigma_max), np.log(tab.sigma_min), n)))


def polyexponential(n: int, tab: NoiseTable, family: str, rho: float = 1.0) -> np.ndarray:
    ramp = np.linspace(1.0, 0.0, n) ** rho
    lo, hi = np.log(tab.sigma_min), np.log(tab.sigma_max)
    return _append_zero(np.exp(ramp * (hi - lo) + lo))


def sgm_uniform(n: int, tab: NoiseTable, family: str) -> np.ndarray:
    start, end = tab.sigma_to_t(tab.sigma_max), tab.sigma_to_t(tab.sigma_min)
    return _append_zero(tab.t_to_sigma(np.linspace(start, end, n + 1)[:-1]))


def kl_optimal(n: int, tab: NoiseTable, family: str) -> np.ndarray:
    """Ends at sigma_min, not at 0 (as in A1111): the last step leaves the model's smallest noise level."""
    a_min, a_max = np.arctan(tab.sigma_min), np.arctan(tab.sigma_max)
    frac = np.arange(n + 1) / n
    return np.tan(frac * a_min + (1.0 - frac) * a_max)


_AYS = {
    "sdxl": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029],
    "sd1": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
}


def align_your_steps(n: int, tab: NoiseTable, family: str) -> np.ndarray:
    """NVIDIA's tabulated 10-step sigmas (SDXL table for SDXL, the SD 1.5 table otherwise), log-linearly resampled."""
    table = np.asarray(_AYS["sdxl" if family == "sdxl" else "sd1"], dtype=np.float64)
    if n == len(table):
        return _append_zero(table)
    xs = np.linspace(0.0, 1.0, len(table))
    ys = np.log(table[::-1])
    resampled = np.exp(np.interp(np.linspace(0.0, 1.0, n), xs, ys))[::-1]
    return _append_zero(resampled)


def simple(n: int, tab: NoiseTable, family: str) -> np.ndarray:
    stride = len(tab.sigmas) / n
    return _append_zero([tab.sigmas[-(1 + int(x * stride))] for x in range(n)])


def normal(n: int, tab: NoiseTable, family: str) -> np.ndarray:
    start, end = tab.sigma_to_t(tab.sigma_max), tab.sigma_to_t(tab.sigma_min)
    return _append_zero(tab.t_to_sigma(np.linspace(start, end, n)))


def ddim(n: int, tab: NoiseTable, family: str) -> np.ndarray:
    """Every (1000 // n)-th training sigma from timestep 1 up; may give more than n steps, as in A1111."""
    stride = max(len(tab.sigmas) // n, 1)
    return _append_zero(tab.sigmas[1::stride][::-1])


BETA_ALPHA = 0.6  # A1111 options beta_dist_alpha / beta_dist_beta, defaults
BETA_BETA = 0.6


def beta(n: int, tab: NoiseTable, family: str, alpha: float = BETA_ALPHA, beta_: float = BETA_BETA) -> np.ndarray:
    ppf = stats.beta.ppf(1.0 - np.linspace(0.0, 1.0, n), alpha, beta_)
    return _append_zero(tab.sigma_min + ppf * (tab.sigma_max - tab.sigma_min))


@dataclass(frozen=True)
class ScheduleSpec:
    """One entry of `/sdapi/v1/schedulers`.

    name: A1111's id (`karras`); label: the display name written to infotext (`Karras`);
    aliases: extra names A1111 recognises in legacy combined sampler names; default_rho and
    need_inner_model: listed as A1111 lists them; sigmas: computes the n-step sigma schedule
    (None for `automatic`, which defers to the sampler).
    """

    name: str
    label: str
    sigmas: Callable[[int, NoiseTable, str], np.ndarray] | None
    aliases: tuple[str, ...] = ()
    default_rho: float = -1.0
    need_inner_model: bool = False


SCHEDULES: tuple[ScheduleSpec, ...] = (
    ScheduleSpec("automatic", "Automatic", None),
    ScheduleSpec("uniform", "Uniform", uniform, need_inner_model=True),
    ScheduleSpec("karras", "Karras", karras, default_rho=7.0),
    ScheduleSpec("exponential", "Exponential", exponential),
    ScheduleSpec("polyexponential", "Polyexponential", polyexponential, default_rho=1.0),
    ScheduleSpec("sgm_uniform", "SGM Uniform", sgm_uniform, aliases=("SGMUniform",), need_inner_model=True),
    ScheduleSpec("kl_optimal", "KL Optimal", kl_optimal),
    ScheduleSpec("align_your_steps", "Align Your Steps", align_your_steps),
    ScheduleSpec("simple", "Simple", simple, need_inner_model=True),
    ScheduleSpec("normal", "Normal", normal, need_inner_model=True),
    ScheduleSpec("ddim", "DDIM", ddim, need_inner_model=True),
    ScheduleSpec("beta", "Beta", beta, need_inner_model=True),
)

SCHEDULES_BY_NAME: dict[str, ScheduleSpec] = {s.name: s for s in SCHEDULES}
AUTOMATIC = SCHEDULES_BY_NAME["automatic"]


def bounded(table: NoiseTable, sigma_min: float, sigma_max: float) -> NoiseTable:
    """`table` (a NoiseTable or LCMNoiseTable) with the schedule's end points moved: A1111 passes the
    schedule functions `sigma_min` / `sigma_max` arguments; the model's own levels stay as they are."""
    lo, hi = float(sigma_min), float(sigma_max)
    cls = type(f"Bounded{type(table).__name__}", (type(table),),
               {"sigma_min": property(lambda self: lo), "sigma_max": property(lambda self: hi)})
    view = cls.__new__(cls)
    view.__dict__.update(table.__dict__)
    return view


@dataclass(frozen=True)
class ScheduleOverrides:
    """A1111's options that reshape a k-diffusion sampler's schedule (0 means "not set"):
    `always_discard_next_to_last_sigma`, `sigma_min`, `sigma_max`, `rho`, `use_old_karras_scheduler_sigmas`
    (end points 0.1 and 10) and `beta_dist_alpha` / `beta_dist_beta`; and the start noise's
    `sgm_noise_multiplier` and `img2img_extra_noise`; and `enable_quantization` (k-diffusion's quantized
    `sigma_to_t`: the UNet's timesteps, and the timesteps the schedule functions compute with) and
    `no_dpmpp_sde_batch_determinism` (the Brownian samplers' noise tree)."""

    discard_penultimate: bool = False
    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    old_karras_sigmas: bool = False
    beta_alpha: float = BETA_ALPHA
    beta_beta: float = BETA_BETA
    sgm_noise: bool = False  # `sgm_noise_multiplier`: initial noise times sqrt(1 + sigma^2), not sigma
    downcast: bool = False  # `use_downcasted_alpha_bar`: the model's alphas_cumprod in float16 (A1111 < 1.7)
    zero_snr: bool = False  # `sd_noise_schedule` "Zero Terminal SNR": alphas_cumprod rescaled to end at ~0
    extra_noise: float = 0.0  # `img2img_extra_noise`: more noise on a denoising pass's start
    quantize: bool = False  # `enable_quantization`: the UNet sees the nearest whole training timestep
    batch_brownian: bool = False  # `no_dpmpp_sde_batch_determinism`: one Brownian tree for the whole batch

    @classmethod
    def from_options(cls, options: dict) -> ScheduleOverrides:
        def get(key: str, default):
            return default if options.get(key) is None else options[key]

        return cls(discard_penultimate=bool(get("always_discard_next_to_last_sigma", False)),
                   sigma_min=float(get("sigma_min", 0.0)), sigma_max=float(get("sigma_max", 0.0)),
                   rho=float(get("rho", 0.0)), old_karras_sigmas=bool(get("use_old_karras_scheduler_sigmas", False)),
                   beta_alpha=float(get("beta_dist_alpha", BETA_ALPHA)), beta_beta=float(get("beta_dist_beta", BETA_BETA)),
                   sgm_noise=bool(get("sgm_noise_multiplier", False)), downcast=bool(get("use_downcasted_alpha_bar", False)),
                   extra_noise=float(get("img2img_extra_noise", 0.0)),
                   quantize=bool(get("enable_quantization", False)),
                   batch_brownian=bool(get("no_dpmpp_sde_batch_determinism", False)),
                   zero_snr=get("sd_noise_schedule", "Default") == "Zero Terminal SNR")


def shaped_schedule(spec: ScheduleSpec, tab: NoiseTable, o: ScheduleOverrides
                    ) -> tuple[Callable[[int, NoiseTable, str], np.ndarray], NoiseTable, dict[str, object]]:
    """A1111's `get_sigmas` for a schedule with a function: (the function, the table it sees, the infotext
    keys A1111 writes). Each override counts only when set (non-zero) and different from the model's own
    value (rho: from the schedule's default rho, for the schedules that have one)."""
    assert spec.sigmas is not None
    notes: dict[str, object] = {}
    fn: Callable[..., np.ndarray] = spec.sigmas
    lo, hi = (0.1, 10.0) if o.old_karras_sigmas else (tab.sigma_min, tab.sigma_max)
    if spec.name == "beta":
        notes["Beta schedule alpha"], notes["Beta schedule beta"] = o.beta_alpha, o.beta_beta
        fn = functools.partial(beta, alpha=o.beta_alpha, beta_=o.beta_beta)
    if o.sigma_min != 0 and o.sigma_min != tab.sigma_min:
        lo = o.sigma_min
        notes["Schedule min sigma"] = o.sigma_min
    if o.sigma_max != 0 and o.sigma_max != tab.sigma_max:
        hi = o.sigma_max
        notes["Schedule max sigma"] = o.sigma_max
    if spec.default_rho != -1 and o.rho != 0 and o.rho != spec.default_rho:
        fn = functools.partial(fn, rho=o.rho)
        notes["Schedule rho"] = o.rho
    view = tab if (lo, hi) == (tab.sigma_min, tab.sigma_max) else bounded(tab, lo, hi)
    return fn, view, notes


def k_sigmas(spec: ScheduleSpec, tab: NoiseTable, n: int, family: str, discard: bool,
             overrides: ScheduleOverrides | None = None) -> tuple[np.ndarray, dict[str, object]]:
    """A1111's KDiffusionSampler.get_sigmas: the n-step schedule (Automatic: the model's own), one step more
    and its penultimate sigma dropped for samplers that discard it (or with `always_discard_next_to_last_
    sigma`), and the infotext keys the options add."""
    o = overrides or ScheduleOverrides()
    notes: dict[str, object] = {}
    if o.discard_penultimate and not discard:
        discard, notes["Discard penultimate sigma"] = True, True
    n_sched = n + 1 if discard else n
    if spec.sigmas is None:
        full = uniform(n_sched, tab, family)
    else:
        fn, view, shaped = shaped_schedule(spec, tab, o)
        notes.update(shaped)
        full = fn(n_sched, view, family)
    if discard:
        full = np.concatenate([full[:-2], full[-1:]])
    return full, notes


def model_table(sched, lcm: bool, o: ScheduleOverrides) -> NoiseTable:
    """The model's noise table as the sampler sees it (LCM: its 50 timesteps). With `use_downcasted_alpha_bar`
    the scheduler's alphas_cumprod become float16 values too (DDIM, PLMS and UniPC read them directly)."""
    if o.downcast:
        sched.alphas_cumprod = sched.alphas_cumprod.half().float()
    if o.zero_snr:
        sched.alphas_cumprod = zero_terminal_snr(sched.alphas_cumprod)
    acp = sched.alphas_cumprod.numpy()
    if lcm:
        return LCMNoiseTable(acp, sched.config.original_inference_steps, o.downcast)
    return NoiseTable(acp, o.downcast)


def zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """A1111's `rescale_zero_terminal_snr_abar` (Lin et al. 2023): sqrt(alphas_cumprod) shifted and scaled
    to run from its first value to 0, squared; the last value set to 4.8973451890853435e-08 (not 0, so the
    largest sigma stays finite)."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    out = root ** 2
    out[-1] = 4.8973451890853435e-08
    return out
