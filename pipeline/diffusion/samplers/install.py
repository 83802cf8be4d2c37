"""Laying a k-diffusion sigma schedule into each diffusers scheduler the way that scheduler lays out its
own (plan.py picks the installer by the sampler's layout): its `step` then performs k-diffusion's update on
A1111's noise levels, with the UNet fed the same continuous timesteps; and k-diffusion's churn laid in."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from pipeline.diffusion.seeds import ImageNoise

from .churn import Churn, churn_schedule
from .schedules import LCMNoiseTable, NoiseTable

__all__ = ["INSTALLERS", "f32", "lay_churn", "stream"]


def f32(values) -> torch.Tensor:
    return torch.tensor(np.asarray(values, dtype=np.float64), dtype=torch.float32)


def _interleave(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(values), 2)


# ---- laying a k-diffusion sigma schedule into each diffusers scheduler -------------------------
def _reset(sched, n: int, tab: NoiseTable) -> None:
    """What set_timesteps would reset; we skip set_timesteps because every array it builds is replaced."""
    sched.num_inference_steps = n
    sched.log_sigmas = torch.from_numpy(tab.log_sigmas.copy())
    sched._step_index = None
    sched._begin_index = None


def _install_plain(sched, s: np.ndarray, tab: NoiseTable, values: Mapping[str, float]) -> tuple[np.ndarray, list[int]]:
    n = len(s) - 1
    _reset(sched, n, tab)
    t = tab.sigma_to_t(s[:-1])
    sched.sigmas = f32(s)
    sched.timesteps = f32(t)
    if hasattr(sched, "derivatives"):
        sched.derivatives = []
    return t, list(range(1, n + 1))


def _two_stage_steps(n: int, final_second: bool) -> list[int]:
    steps = [1]
    for k in range(1, n):
        steps += [k, k + 1]
    if final_second:
        steps.append(n)
    return steps


def _two_stage_timesteps(t: np.ndarray, second: np.ndarray, n: int, final_second: bool) -> list[float]:
    """Model-call timesteps of a two-stage sampler over n steps: step k calls at t[k], then at second[k];
    the last step's second call happens only when it does not end at sigma 0."""
    ts = [t[0]]
    for k in range(n - 1):
        ts += [second[k], t[k + 1]]
    if final_second:
        ts.append(second[n - 1])
    return ts


def _install_heun(sched, s: np.ndarray, tab: NoiseTable, values: Mapping[str, float]):
    n = len(s) - 1
    _reset(sched, n, tab)
    t = tab.sigma_to_t(s)
    final_second = s[-1] > 0
    sched.sigmas = f32(np.concatenate([s[:1], _interleave(s[1:])]))
    ts = np.concatenate([t[:1], _interleave(t[1:n]), t[n:] if final_second else []])
    sched.timesteps = f32(ts)
    sched.prev_derivative, sched.dt, sched.sample = None, None, None
    return ts, _two_stage_steps(n, final_second)


def _install_dpmsolver_sde(sched, s: np.ndarray, tab: NoiseTable, values: Mapping[str, float]):
    n = len(s) - 1
    _reset(sched, n, tab)
    t = tab.sigma_to_t(s)
    with np.errstate(divide="ignore"):
        mid = tab.sigma_to_t(np.sqrt(s[:-1] * s[1:]))  # the midpoint in log-sigma: k-diffusion's r = 1/2
    final_second = s[-1] > 0
    sched.sigmas = f32(np.concatenate([s[:1], _interleave(s[1:])]))
    ts = _two_stage_timesteps(t, mid, n, final_second)
    sched.timesteps = f32(ts)
    sched.sample, sched.mid_point_sigma, sched.noise_sampler = None, None, None
    return np.asarray(ts), _two_stage_steps(n, final_second)


def _install_kdpm2(sched, s: np.ndarray, tab: NoiseTable, values: Mapping[str, float]):
    n = len(s) - 1
    _reset(sched, n, tab)
    t = tab.sigma_to_t(s)
    ip = np.zeros_like(s)
    ip[1:] = np.sqrt(s[1:] * s[:-1])  # the log-sigma midpoint of the step ending at s[i]
    final_second = s[-1] > 0
    sched.sigmas = f32(np.concatenate([s[:1], _interleave(s[1:]), s[-1:]]))
    sched.sigmas_interpol = f32(np.concatenate([ip[:1], _interleave(ip[1:]), ip[-1:]]))
    t_ip = tab.sigma_to_t(np.maximum(ip, 1e-30))
    ts = _two_stage_timesteps(t, t_ip[1:], n, final_second)  # ip[k] belongs to the step ending at s[k]
    sched.timesteps = f32(ts)
    sched.sample = None
    return np.asarray(ts), _two_stage_steps(n, final_second)


def _install_kdpm2_ancestral(sched, s: np.ndarray, tab: NoiseTable, values: Mapping[str, float]):
    """k-diffusion's DPM2 a with its `eta` (get_ancestral_step) and `s_noise` (scales the noise only)."""
    n = len(s) - 1
    _reset(sched, n, tab)
    t = tab.sigma_to_t(s)
    nxt = np.concatenate([s[1:], [0.0]])
    eta = values["eta"]
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.where(s > 0, np.sqrt(np.maximum(nxt**2 * (s**2 - nxt**2) / np.where(s > 0, s, 1) ** 2, 0)), 0.0)
    up = np.minimum(eta * up, nxt)
    down = np.sqrt(np.maximum(nxt**2 - up**2, 0.0)) if eta else nxt
    ip = np.where(down > 0, np.sqrt(s * down), 0.0)
    final_second = down[n - 1] > 0
    il = lambda a: np.concatenate([a[:1], _interleave(a[1:]), a[-1:]])
    sched.sigmas = f32(il(s))
    sched.sigmas_interpol = f32(il(ip))
    sched.sigmas_up = f32(il(up * values["s_noise"]))
    sched.sigmas_down = f32(il(down))
    t_ip = tab.sigma_to_t(np.maximum(ip, 1e-30))
    ts = _two_stage_timesteps(t, t_ip, n, final_second)
    sched.timesteps = f32(ts)
    sched.sample = None
    return np.asarray(ts), _two_stage_steps(n, final_second)


def _install_multistep(sched, s: np.ndarray, tab: NoiseTable, values: Mapping[str, float]):
    n = len(s) - 1
    # k-diffusion takes a first-order last step only when it ends at sigma 0
    sched.register_to_config(final_sigmas_type="zero" if s[-1] == 0 else "sigma_min")
    _reset(sched, n, tab)
    t = tab.sigma_to_t(s[:-1])
    sched.sigmas = f32(s)
    sched.timesteps = f32(t)
    sched.num_inference_steps = n
    return t, list(range(1, n + 1))


def _install_call_list(sched, s: np.ndarray, tab: NoiseTable, values: Mapping[str, float]):
    """Schedulers of our own (DPM++ 2S a, DPM fast, Restart) that plan every model call themselves: a 2S a
    step whose sigma_down is 0 takes one call, not two; DPM fast mixes orders; Restart inserts its climbs."""
    calls = sched.install(s, values)
    ts = tab.sigma_to_t(np.array([c.sigma for c in calls]))
    sched.timesteps = f32(ts)
    return ts, sched.user_steps()


def _install_lcm(sched, s: np.ndarray, tab: LCMNoiseTable, values: Mapping[str, float]):
    """A1111's LCM: the UNet sees each level snapped to its nearest LCM timestep; x re-noises to the level itself."""
    t = tab.sigma_to_t(s[:-1])
    sched.install(f32(s), f32(t))
    return t, list(range(1, len(s)))


def lay_churn(sched, layout: str, s: np.ndarray, tab: NoiseTable, ts: np.ndarray, values: Mapping[str, float],
               generators: ImageNoise | list[torch.Generator]) -> np.ndarray:
    """k-diffusion's churn (churn.py): the model is called at sigma_hat on every churned step, and DPM2's midpoint
    moves to sqrt(sigma_hat * sigma_next). Returns the timesteps with those laid in; sets `sched.churn`."""
    hat, gamma = churn_schedule(s, values["s_churn"], values["s_tmin"], values["s_tmax"])
    on = np.flatnonzero(gamma > 0)
    ts = np.array(ts, dtype=np.float64)
    stride = 1 if layout == "plain" else 2  # the first model call of step k is call k (Euler) or 2k (Heun, DPM2)
    ts[on * stride] = tab.sigma_to_t(hat[on])
    if layout == "kdpm2":
        mid = np.sqrt(hat[on] * s[on + 1])
        ip = sched.sigmas_interpol.clone()
        ip[2 * on + 1] = ip[2 * on + 2] = f32(mid)
        sched.sigmas_interpol = ip
        second = 2 * on + 1 < len(ts)  # a last step to sigma 0 has no second call
        ts[2 * on[second] + 1] = tab.sigma_to_t(mid[second])
    sched.churn = Churn(f32(s), f32(hat), gamma.tolist(), values["s_noise"], stream(generators))
    return ts


def stream(generators: ImageNoise | list[torch.Generator]) -> ImageNoise | list[torch.Generator]:
    return generators if isinstance(generators, ImageNoise) else list(generators)


INSTALLERS = {
    "plain": _install_plain, "heun": _install_heun, "dpmsolver_sde": _install_dpmsolver_sde,
    "kdpm2": _install_kdpm2, "kdpm2_ancestral": _install_kdpm2_ancestral, "multistep": _install_multistep,
    "lcm": _install_lcm, "call_list": _install_call_list,
}
