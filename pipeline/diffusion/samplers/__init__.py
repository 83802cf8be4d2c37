"""Samplers and schedule types: A1111 v1.10's names and behaviour, run through diffusers-style schedulers.

Served (`api_samplers()`, A1111's order): DPM++ 2M, DPM++ SDE, DPM++ 2M SDE, DPM++ 2M SDE Heun, DPM++ 2S a,
DPM++ 3M SDE, Euler a, Euler, LMS, Heun, DPM2, DPM2 a, DPM fast, Restart, DDIM, DDIM CFG++, PLMS, UniPC,
LCM. Each k-diffusion sampler runs on the exact A1111 sigma schedule of every schedule type (all twelve of
`/schedulers`), laid into the diffusers scheduler so its step is k-diffusion's update (checked step for
step against reference updates in tests/pipeline/diffusion/test_samplers.py). DPM++ 2S a, DPM fast and Restart have
no diffusers scheduler: dpmpp2s.py, dpmfast.py and restart.py drive k-diffusion's / A1111's update one
model call at a time from a call list planned in advance (calllist.py).

DDIM, DDIM CFG++, PLMS and UniPC run A1111's own timestep grid and, as in A1111, have no schedule types:
they accept only Automatic. DDIM and PLMS step to the grid point below each evaluated timestep
(timesteps.py), which is not always one stride away. DDIM CFG++ is DDIM guided at cfg_scale / 12.5 that
steps along the unconditional noise prediction, which the sampling loop hands its scheduler
(`needs_uncond`).

LCM is A1111's (lcm.py): its denoiser knows only the 50 LCM timesteps 19, 39, ..., 999. The noise
levels come from that table (`LCMNoiseTable`: Automatic and Uniform space n timesteps evenly from 999
to 19 and interpolate, Karras & co. span its sigma range, Simple/DDIM pick from its 50 levels); the
UNet is called at the LCM timestep nearest each level, the LCM boundary condition is taken there, and
the sample is re-noised to the next (unsnapped) level with noise from the per-image generators.
Deviation: A1111 reads every model output as epsilon under LCM (a v-prediction checkpoint gives a
broken image there); we convert v-prediction like every other sampler.

Omitted:
- DPM adaptive: DPM-Solver with an adaptive step size (error control), so its model calls cannot be
  planned before the pass starts.

Parameters: eta (None means A1111's options: `eta_ancestral` 1 for the ancestral/SDE samplers,
`eta_ddim` 0 for DDIM) is k-diffusion's for Euler a, DPM2 a, DPM++ 2S a, DPM fast (`get_ancestral_step`),
DPM++ SDE, DPM++ 2M SDE (+ Heun) and DPM++ 3M SDE (ancestral.py, dpmpp2s.py, dpmfast.py, brownian.py):
0 makes them deterministic. Refused: DPM2 a with eta above 1, where a step can get sigma_down 0 and
k-diffusion then takes a one-stage, noise-free step that the two-stage layout cannot express. s_noise
scales the noise of DPM2 a, DPM++ 2S a, DPM fast and the DPM++ SDE samplers, as A1111 v1.10 passes it to
them (not to Euler a, Restart or LCM). Euler, Heun and DPM2 take
A1111's churn set s_churn, s_tmin, s_tmax (0 meaning no upper end) and s_noise as k-diffusion's
`sample_euler`/`sample_heun`/`sample_dpm_2` use them (churn.py): on every step with s_tmin <= sigma <= s_tmax,
gamma = min(s_churn / n, sqrt(2) - 1) raises the noise level to sigma_hat = sigma * (1 + gamma) BEFORE the
model call, with noise (randn * s_noise, drawn on every step from the per-image generators, as k-diffusion
draws it) of size sqrt(sigma_hat^2 - sigma^2); the model is called at sigma_hat's timestep and the step
runs from there. s_churn 0 (A1111's default) leaves them deterministic and exactly diffusers' step.
DDIM and DDIM CFG++ take any eta >= 0. LCM and Restart take no parameters, as in A1111.
"""
from .eta import eta_infotext, option_eta
from .plan import SamplerParams, StepPlan, a1111_timestep_grid, fixed_steps_total, make_plan, validate_params
from .schedules import SCHEDULES, NoiseTable, ScheduleOverrides, ScheduleSpec
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
from .unipc import UniPCOptions

__all__ = [
    "SAMPLERS", "SCHEDULES", "NoiseTable", "SamplerParams", "SamplerSpec", "ScheduleOverrides", "ScheduleSpec",
    "StepPlan", "UniPCOptions", "a1111_timestep_grid", "api_samplers", "api_schedulers", "effective_schedule",
    "eta_infotext", "fixed_steps_total", "label_for_infotext", "make_plan", "option_eta", "resolve",
    "resolve_hires", "resolve_schedule", "validate_params",
]
