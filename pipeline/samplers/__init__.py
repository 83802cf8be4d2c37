"""Samplers and schedule types: A1111 v1.10's names and behaviour, served by diffusers schedulers.

Served (`api_samplers()`): DPM++ 2M, DPM++ SDE, DPM++ 2M SDE, DPM++ 2M SDE Heun, DPM++ 3M SDE,
Euler a, Euler, LMS, Heun, DPM2, DPM2 a, DDIM, PLMS, UniPC. Each k-diffusion sampler runs on the
exact A1111 sigma schedule of every schedule type (all twelve of `/schedulers`), laid into the
diffusers scheduler so its step is k-diffusion's update (checked step for step against reference
k-diffusion updates in tests/pipeline/test_samplers.py). DDIM, PLMS and UniPC run A1111's own
timestep grid and, as in A1111, have no schedule types: they accept only Automatic.

Omitted, because diffusers has no faithful equivalent:
- DPM++ 2S a: k-diffusion takes an ancestral step to sigma_down with a midpoint stage;
  DPMSolverSinglestep instead uses grid points as stages and has no ancestral noise.
- DPM fast, DPM adaptive: DPM-Solver with its own timestep selection / adaptive step size
  (error control); no diffusers scheduler does this.
- Restart: A1111's restart sampler (Heun steps with re-noising back up the schedule); none in diffusers.
- DDIM CFG++: needs the unconditional prediction separately inside the update (CFG++), which the
  scheduler interface (one guided model output per step) cannot carry.
- LCM: A1111 calls the UNet at the nearest of the 50 LCM timesteps but re-noises to the
  un-quantised interpolated sigma, on a linspace(999, 19) grid; diffusers' LCMScheduler picks
  other timesteps and re-noises to its discrete ones.

Parameters: eta other than 1 for ancestral/SDE samplers and s_churn other than 0 (Euler, Heun,
DPM2) are refused with InvalidRequest: diffusers fixes eta at 1 and applies churn after the model
call instead of before it. s_noise, s_tmin and s_tmax only act through churn in A1111 v1.10, so
they are validated and have no effect. DDIM takes any eta >= 0.
"""
from .plan import SamplerParams, StepPlan, a1111_timestep_grid, fixed_steps_total, make_plan, validate_params
from .schedules import SCHEDULES, NoiseTable, ScheduleSpec
from .table import (
    SAMPLERS,
    SamplerSpec,
    api_samplers,
    api_schedulers,
    effective_schedule,
    label_for_infotext,
    resolve,
    resolve_hires,
    resolve_schedule,
)

__all__ = [
    "SAMPLERS", "SCHEDULES", "NoiseTable", "SamplerParams", "SamplerSpec", "ScheduleSpec", "StepPlan",
    "a1111_timestep_grid", "api_samplers", "api_schedulers", "effective_schedule", "fixed_steps_total",
    "label_for_infotext", "make_plan", "resolve", "resolve_hires", "resolve_schedule", "validate_params",
]
