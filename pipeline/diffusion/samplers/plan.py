"""Turn a resolved sampler + schedule into a ready diffusers scheduler and the exact steps to run.

The k-diffusion samplers run on A1111's own sigma schedule: we compute it (schedules.py) and lay
it into the diffusers scheduler the way that scheduler lays out its own, so its `step` performs
k-diffusion's update on A1111's noise levels, with the UNet fed the same continuous timesteps.
A denoising pass (hires pass 2, img2img) installs only the tail of the schedule that is run, so
every scheduler begins at index 0.
"""
from __future__ import annotations

import copy
import inspect
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.diffusion.seeds import ImageNoise
from pipeline.runtime.errors import InvalidRequest

from .brownian import BrownianNoise, batch_tree_seed
from .install import INSTALLERS, f32, lay_churn, stream
from .schedules import (
    NoiseTable,
    ScheduleOverrides,
    ScheduleSpec,
    k_sigmas,
    model_table,
    quantized,
)
from .table import SamplerSpec, check_supported, effective_schedule
from .unipc import UniPCOptions, model_times
from .unipc import configure as configure_unipc


@dataclass(frozen=True)
class SamplerParams:
    """A1111's sampler parameters; None means A1111's default (eta: 1 for ancestral/SDE, 0 for DDIM;
    s_churn 0, s_tmin 0, s_tmax 0 meaning infinity, s_noise 1)."""

    eta: float | None = None
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    unipc: UniPCOptions | None = None  # A1111's uni_pc_* options (UniPC only)


@dataclass
class StepPlan:
    """Everything the sampling loop needs for one pass.

    scheduler: the configured diffusers scheduler; timesteps: the timesteps to run, in order (one
    UNet evaluation each); step_kwargs: extra arguments for `scheduler.step`; steps: the pass's
    step count as A1111 reports progress; sigmas: the k-diffusion noise levels run (None for
    DDIM/PLMS/UniPC); start_sigma: the noise level the pass starts from.
    """

    scheduler: Any
    timesteps: torch.Tensor
    step_kwargs: dict[str, Any]
    steps: int
    sigmas: torch.Tensor | None
    start_sigma: float
    sampler: SamplerSpec
    schedule: ScheduleSpec
    _user_steps: list[int] = field(repr=False, default_factory=list)
    _start: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = field(repr=False, default=None)
    notes: dict[str, Any] = field(default_factory=dict)  # infotext keys the schedule's options add (A1111's)
    # the timesteps the UNet is called with when they differ from `timesteps` (`enable_quantization`: the
    # nearest whole training timesteps); `timesteps` keep the exact noise levels the rest of the loop reads
    model_timesteps: torch.Tensor | None = None

    @property
    def unet_timesteps(self) -> torch.Tensor:
        """What the UNet is called with, one per model call."""
        return self.timesteps if self.model_timesteps is None else self.model_timesteps

    @property
    def layout_is_vp(self) -> bool:
        """True when the scheduler's latent is x / sqrt(sigma^2 + 1) (DPMSolverMultistep, DDIM, PLMS, UniPC)."""
        return self.sampler.layout in ("multistep", "ddim", "plms", "unipc")

    @property
    def evaluations(self) -> int:
        """UNet evaluations this pass makes (per CFG batch)."""
        return len(self.timesteps)

    def user_step(self, i: int) -> int:
        """The 1-based A1111 step that loop iteration i belongs to (second-order samplers take two per step)."""
        return self._user_steps[i]

    def start(self, noise: torch.Tensor, init_latents: torch.Tensor | None = None) -> torch.Tensor:
        """The latent the loop starts from: pure noise at the first level, or `init_latents` noised to it."""
        return self._start(noise, init_latents)


_BIG = 1e30


def _param(value: float | None, name: str, default: float, *, minimum: float | None = 0.0) -> float:
    if value is None:
        return default
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(name, f"must be a number, got {value!r}") from None
    if math.isnan(value) or math.isinf(value):
        raise InvalidRequest(name, f"must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise InvalidRequest(name, f"must be >= {minimum:g}, got {value:g}")
    return value


def validate_params(sampler: SamplerSpec, params: SamplerParams) -> dict[str, float]:
    eta = _param(params.eta, "eta", sampler.eta_default if sampler.eta_default is not None else 1.0)
    s_churn = _param(params.s_churn, "s_churn", 0.0)
    s_tmin = _param(params.s_tmin, "s_tmin", 0.0)
    s_tmax = _param(params.s_tmax, "s_tmax", 0.0)
    s_noise = _param(params.s_noise, "s_noise", 1.0)
    # Parameters that A1111 ignores for a sampler are ignored here too; ones that would change the
    # result but which diffusers cannot reproduce faithfully are refused rather than ignored.
    if sampler.layout == "kdpm2_ancestral" and eta > 1.0:
        # above 1, a step can turn its whole noise level into fresh noise (sigma_down 0); k-diffusion then takes
        # a single Euler step there and adds no noise at all, which the two-stage diffusers layout cannot express
        raise InvalidRequest("eta", f"sampler {sampler.name!r} is available with eta between 0 and 1 here "
                             f"(above 1 some steps have sigma_down 0, which this server does not run); got {eta:g}")
    # s_churn, s_tmin and s_tmax act only for Euler, Heun and DPM2 (k-diffusion's churn, churn.py), where s_noise
    # scales the churn noise; s_noise also scales the ancestral/SDE noise of DPM2 a, DPM++ 2S a, DPM fast and
    # the DPM++ SDE samplers (A1111 v1.10 passes it to them). Euler a, LCM and Restart receive none of them.
    return {"eta": eta, "s_churn": s_churn, "s_tmin": s_tmin, "s_tmax": s_tmax if s_tmax != 0.0 else math.inf,
            "s_noise": s_noise}


def _build(sampler: SamplerSpec, scheduler_config: Mapping[str, Any]):
    """A fresh scheduler (copied from a cached pristine one: some diffusers constructors take 0.2 s)."""
    config = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
    key = (sampler.name, json.dumps(config, sort_keys=True, default=str))
    pristine = _PRISTINE.get(key)
    if pristine is None:
        pristine = _construct(sampler, config)
        if len(_PRISTINE) >= 64:
            _PRISTINE.clear()
        _PRISTINE[key] = pristine
    return copy.deepcopy(pristine)


_PRISTINE: dict[tuple[str, str], Any] = {}


def _construct(sampler: SamplerSpec, config: dict[str, Any]):
    config.update(sampler.config_overrides)
    cls = sampler.scheduler_class
    accepted = set(inspect.signature(cls.__init__).parameters)
    unknown = [k for k, v in sampler.config_overrides.items() if k not in accepted and v not in (False, None)]
    if unknown:  # from_config would silently drop them
        raise RuntimeError(f"{cls.__name__} does not accept {unknown}")
    return cls.from_config(config)


# ---- A1111's timestep samplers (DDIM, PLMS, UniPC) -----------------------------------------------
def a1111_timestep_grid(steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """A1111's DDIM/PLMS/UniPC grid: every (1000 // steps)-th timestep from 1, ascending."""
    stride = num_train_timesteps // steps
    return np.clip(np.arange(0, num_train_timesteps, stride) + 1, 0, num_train_timesteps - 1)


def _vp_sigma_at(tab: NoiseTable, m) -> np.ndarray:
    """VE sigma at a continuous model timestep, interpolating log(alpha) as A1111's UniPC does."""
    log_alpha = np.interp(np.asarray(m, dtype=np.float64), np.arange(len(tab.alphas_cumprod)),
                          0.5 * np.log(tab.alphas_cumprod))
    alpha = np.exp(log_alpha)
    return np.sqrt(1.0 - alpha**2) / alpha


def _plan_timestep_sampler(sampler: SamplerSpec, sched, tab: NoiseTable, steps: int, total: int | None,
                           unipc: UniPCOptions | None = None):
    """Returns (timesteps, user_steps, start_alpha_cumprod)."""
    n_train = len(tab.alphas_cumprod)
    if (total or steps) > n_train:
        raise InvalidRequest("steps", f"sampler {sampler.name!r} supports at most {n_train} steps")
    grid = a1111_timestep_grid(total or steps, n_train)
    transitions = grid[1:][::-1].copy()  # A1111 evaluates every grid timestep but the first (it ends there)
    if total is not None:
        transitions = transitions[len(transitions) - max(steps - 1, 1):]
    if len(transitions) == 0:
        transitions = grid[:1]
    evals = [int(t) for t in transitions]
    below = [int(grid[i - 1]) if i > 0 else 0 for i in np.searchsorted(grid, evals)]  # each step's landing point
    start_acp = float(tab.alphas_cumprod[evals[0]])
    if sampler.layout == "ddim":
        sched.install(evals, below)
        return sched.timesteps, list(range(1, len(evals) + 1)), start_acp
    if sampler.layout == "plms":
        calls = sched.install(evals, below)
        return sched.timesteps, [1] + list(range(1, len(calls))), start_acp
    # UniPC: A1111 runs UniPC's own time-uniform grid from the start timestep down to 0
    k = len(grid) if total is None else max(steps - 1, 1)
    m0 = float(n_train - 1) if total is None else float(transitions[0])
    unipc = unipc or UniPCOptions()
    configure_unipc(sched, unipc, k)
    m = model_times(tab.alphas_cumprod, m0, k, unipc.skip_type)
    sched.set_timesteps(k)
    sched.timesteps = f32(m[:-1])
    sched.sigmas = f32(_vp_sigma_at(tab, m))
    acp0 = 1.0 / (1.0 + float(_vp_sigma_at(tab, m0)) ** 2)
    return sched.timesteps, list(range(1, k + 1)), acp0


# ---- the public entry point -----------------------------------------------------------------------
def fixed_steps_total(steps: int, denoising_strength: float) -> int:
    """A1111's fixed-steps rule for a denoising pass: the schedule is computed for int(steps / min(d, 0.999))."""
    return int(steps / min(denoising_strength, 0.999))


def denoise_steps(steps: int, denoising_strength: float, fix_steps: bool) -> tuple[int, int]:
    """A1111's `setup_img2img_steps`: (schedule length, steps run from its tail) for a pass from strength d.

    fix_steps (hires pass two always, img2img with the option `img2img_fix_steps`): a schedule of
    int(steps / min(d, 0.999)) steps whose last `steps` run. Otherwise (plain img2img): the `steps`-step
    schedule, of which the last int(min(d, 0.999) * steps) + 1 run."""
    if fix_steps:
        return fixed_steps_total(steps, denoising_strength), steps
    return steps, int(min(denoising_strength, 0.999) * steps) + 1


def make_plan(
    sampler: SamplerSpec,
    schedule: ScheduleSpec,
    scheduler_config: Mapping[str, Any],
    *,
    steps: int,
    denoising_strength: float | None = None,
    params: SamplerParams | None = None,
    generators: ImageNoise | list[torch.Generator] | None = None,
    seeds: list[int] | None = None,
    family: str = "sd1",
    fix_steps: bool = True,
    overrides: ScheduleOverrides | None = None,
) -> StepPlan:
    """Build the scheduler and step plan for one pass.

    txt2img (denoising_strength None): the full `steps`-step schedule from pure noise. A denoising
    pass (hires pass 2, img2img) uses A1111's fixed-steps rule: the schedule is computed for
    int(steps / min(d, 0.999)) steps and its last `steps` steps run, starting from the noise level
    at that point; with `fix_steps` false (plain img2img) the `steps`-step schedule's last
    int(d * steps) + 1 steps run instead (`denoise_steps`). `generators` (the pass's seeds.ImageNoise, or
    torch generators) feed the sampler's fresh noise; `seeds` seed the Brownian trees. `family` picks the
    Align Your Steps table. `overrides`: the options that reshape the schedule and the start noise
    (schedules.ScheduleOverrides), listed in the plan's `notes` under A1111's infotext keys. Raises InvalidRequest for bad parameters."""
    params = params or SamplerParams()
    check_supported(sampler, schedule)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InvalidRequest("steps", f"must be a whole number >= 1, got {steps!r}")
    steps = int(steps)
    values = validate_params(sampler, params)
    total = None
    if denoising_strength is not None:
        d = _param(denoising_strength, "denoising_strength", 0.0)
        if d <= 0.0:
            raise InvalidRequest("denoising_strength", f"must be > 0 for a denoising pass, got {d:g}")
        total, steps = denoise_steps(steps, d, fix_steps)
    if isinstance(generators, list) and seeds is not None and len(generators) != len(seeds):
        raise InvalidRequest("seeds", "need one generator and one seed per image")

    churn = "s_churn" in sampler.params and values["s_churn"] > 0
    needs_generators = ((sampler.stochastic and not sampler.brownian)
                        or (sampler.layout == "ddim" and values["eta"] > 0) or churn)
    if needs_generators and not generators:
        raise ValueError(f"{sampler.name} draws noise while sampling: pass its noise generators (the pass's ImageNoise)")
    if sampler.brownian and not seeds:
        raise ValueError(f"{sampler.name} uses seeded Brownian noise: pass one seed per image")

    sched = _build(sampler, scheduler_config)
    o = overrides or ScheduleOverrides()
    tab = model_table(sched, sampler.layout == "lcm", o)  # A1111's LCM denoiser sees only the LCM timesteps
    step_kwargs: dict[str, Any] = {}
    accepted = inspect.signature(sched.step).parameters
    if "generator" in accepted and generators is not None and (sampler.stochastic or sampler.layout == "ddim"):
        step_kwargs["generator"] = stream(generators)
    if sampler.layout == "ddim":  # DDIM and DDIM CFG++
        step_kwargs["eta"] = values["eta"]

    extra = o.extra_noise if total is not None else 0.0  # A1111's img2img_extra_noise: denoising passes only
    if sampler.kind == "timesteps":
        ts, user, acp0 = _plan_timestep_sampler(sampler, sched, tab, steps, total, params.unipc)
        start_sigma = math.sqrt((1.0 - acp0) / acp0)

        def start(noise, init_latents=None, _a=acp0):
            if init_latents is None:
                return noise.clone()
            return init_latents * math.sqrt(_a) + noise * (math.sqrt(1.0 - _a) + extra * math.sqrt(_a))

        outer = user[-1]
        return StepPlan(sched, ts, step_kwargs, outer, None, start_sigma, sampler, schedule, user, start,
                        {"Extra noise": extra} if extra else {})

    # k-diffusion samplers
    spec = effective_schedule(sampler, schedule)
    n = total if total is not None else steps
    quantize = o.quantize and sampler.layout != "lcm"  # A1111's LCM denoiser snaps to its own 50 steps anyway
    seen = quantized(tab) if quantize else tab
    full, notes = k_sigmas(spec, seen, n, family, sampler.discard_next_to_last_sigma, o)
    s = full[n - steps:] if total is not None else full
    if len(s) < 2 or not np.all(np.isfinite(s)):
        raise InvalidRequest("steps", f"{steps} steps give no noise levels to sample with {spec.label!r}")
    if sampler.layout == "call_list":  # DPM fast spans the model's sigma range in txt2img, the tail's in a denoise
        span = (float(s[-2]), float(s[0])) if total is not None else (tab.sigma_min, tab.sigma_max)
        values = {**values, "sigma_range": span}
    ts, user = INSTALLERS[sampler.layout](sched, s, tab, values)
    if churn:
        ts = lay_churn(sched, sampler.layout, s, tab, ts, values, generators)
    sched.set_begin_index(0)
    for name in ("eta", "s_noise"):  # the eta-capable schedulers (ancestral.py, brownian.py) take them as attributes
        if name in sampler.params and hasattr(sched, name):
            setattr(sched, name, values[name])
    s0 = float(s[0])
    vp = sampler.layout == "multistep"
    # A1111 spans the tree over its float32 sigmas: the whole schedule's; with no_dpmpp_sde_batch_determinism
    # k-diffusion makes the tree itself, over the levels it runs (a denoising pass: the tail)
    span32 = (s if o.batch_brownian else full).astype(np.float32)
    brownian_range = (float(span32[span32 > 0].min()), float(span32.max()))

    scale = math.sqrt(1.0 + s0 * s0) if o.sgm_noise else s0  # A1111's sgm_noise_multiplier
    notes.update({"SGM noise multiplier": True} if o.sgm_noise else {}, **({"Extra noise": extra} if extra else {}))

    def start(noise, init_latents=None):
        x = noise * scale if init_latents is None else init_latents + noise * (scale + extra)
        if vp:  # DPMSolverMultistep works on x / sqrt(sigma^2 + 1)
            x = x / math.sqrt(s0 * s0 + 1.0)
        if sampler.brownian:
            if seeds is None:
                raise InvalidRequest("seeds", f"sampler {sampler.name!r} needs the image seeds for its Brownian noise")
            tree_seeds = batch_tree_seed(seeds) if o.batch_brownian else seeds
            ns = BrownianNoise(tuple(noise.shape), *brownian_range, tree_seeds, noise.device)
            sched.noise_sampler = ns
        return x

    if sampler.brownian and seeds is not None and len(seeds) and sampler.layout == "dpmsolver_sde":
        sched.noise_sampler_seed = [int(s) & (2**64 - 1) for s in seeds]  # torchsde takes seeds >= 0
    # enable_quantization: k-diffusion's denoiser hands the UNet the nearest training timestep of each level
    model_ts = f32(tab.nearest_t(tab.t_to_sigma(np.asarray(ts, dtype=np.float64)))) if quantize else None
    return StepPlan(sched, f32(ts), step_kwargs, len(s) - 1, f32(s), s0, sampler, schedule, user, start,
                    notes, model_ts)
