"""Samplers and schedules: names, support matrix, A1111 schedules, and step-for-step k-diffusion equivalence.

The "model" everywhere is a fixed smooth function of (scaled latent, timestep), so every test is
fast and deterministic; the reference updates below are written from k-diffusion's algorithms.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.diffusion.samplers import (
    SAMPLERS,
    SCHEDULES,
    NoiseTable,
    SamplerParams,
    a1111_timestep_grid,
    api_samplers,
    api_schedulers,
    label_for_infotext,
    make_plan,
    resolve,
    resolve_hires,
    validate_params,
)
from pipeline.diffusion.samplers.brownian import BrownianNoise
from pipeline.diffusion.samplers.schedules import SCHEDULES_BY_NAME, karras
from pipeline.diffusion.samplers.table import SAMPLERS_BY_NAME, effective_schedule
from pipeline.runtime.errors import InvalidRequest, UnknownName

SD1 = {
    "_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading", "clip_sample": False,
    "trained_betas": None,
}
SD2V = {**SD1, "prediction_type": "v_prediction"}
SHAPE = (2, 4, 8, 8)
SEEDS = [1234, 1235]


def model(x_in: torch.Tensor, t) -> torch.Tensor:
    """A stand-in UNet: smooth in x and in the timestep, bounded."""
    t = torch.as_tensor(t, dtype=torch.float32)
    return 0.6 * x_in * torch.cos(t / 400.0) + 0.2 * torch.sin(1.3 * x_in) + 0.05 * torch.tanh(t / 500.0)


def gens(seeds=SEEDS):
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def initial_noise(seeds=SEEDS):
    return torch.cat([torch.randn((1,) + SHAPE[1:], generator=g) for g in gens(seeds)])


def uncond_model(x_in: torch.Tensor, t) -> torch.Tensor:
    """The stand-in UNet's unconditional output, for DDIM CFG++ (which steps along it)."""
    return 0.8 * model(x_in, t) + 0.1 * torch.cos(x_in)


def run(plan, noise, init=None, counter=None):
    x = plan.start(noise, init)
    needs_uncond = getattr(plan.scheduler, "needs_uncond", False)
    for i, t in enumerate(plan.timesteps):
        x_in = plan.scheduler.scale_model_input(x, t)
        out = model(x_in, t)
        if counter is not None:
            counter.append(plan.user_step(i))
        extra = {"uncond": uncond_model(x_in, t)} if needs_uncond else {}
        x = plan.scheduler.step(out, t, x, **plan.step_kwargs, **extra).prev_sample
    return x


def plan_for(name, schedule="automatic", steps=5, d=None, config=SD1, seeds=SEEDS, **params):
    sampler = SAMPLERS_BY_NAME[name]
    return make_plan(sampler, SCHEDULES_BY_NAME[schedule], config, steps=steps, denoising_strength=d,
                     params=SamplerParams(**params), generators=gens(seeds), seeds=seeds)


# ---- every listed sampler with every schedule it claims -----------------------------------------------

CLAIMED = [(s.name, sch) for s in SAMPLERS for sch in s.schedules]


@pytest.mark.parametrize("name,schedule", CLAIMED)
def test_every_claimed_combination_runs(name, schedule):
    for d in (None, 0.6):
        plan = plan_for(name, schedule, steps=4, d=d)
        x = run(plan, initial_noise(), torch.zeros(SHAPE) if d else None)
        assert torch.isfinite(x).all(), (name, schedule, d)
        assert plan.steps >= 1 and plan.user_step(len(plan.timesteps) - 1) == plan.steps


@pytest.mark.parametrize("name", [s.name for s in SAMPLERS])
def test_v_prediction_config(name):
    plan = plan_for(name, steps=4, config=SD2V)
    assert plan.scheduler.config.prediction_type == "v_prediction"
    assert torch.isfinite(run(plan, initial_noise())).all()


# ---- reference k-diffusion updates (written from the published algorithms) -------------------------

class Ref:
    """k-diffusion's view: x in variance-exploding form, a denoiser D(x, sigma)."""

    def __init__(self, config):
        from diffusers import EulerDiscreteScheduler
        self.tab = NoiseTable(EulerDiscreteScheduler.from_config(config).alphas_cumprod.numpy())
        self.v = config["prediction_type"] == "v_prediction"

    def denoise(self, x, sigma):
        sigma = float(sigma)
        c_in = 1.0 / math.sqrt(sigma**2 + 1.0)
        out = model(x * c_in, torch.tensor(float(self.tab.sigma_to_t(sigma)), dtype=torch.float32))
        if self.v:
            return x / (sigma**2 + 1.0) - out * sigma / math.sqrt(sigma**2 + 1.0)
        return x - out * sigma


def ancestral(s, s_next, eta=1.0):
    """k-diffusion's get_ancestral_step: (sigma_down, sigma_up)."""
    if not eta:
        return s_next, 0.0
    up = min(s_next, eta * math.sqrt(max(s_next**2 * (s**2 - s_next**2) / s**2, 0.0)))
    return math.sqrt(max(s_next**2 - up**2, 0.0)), up


class RefLCM:
    """A1111's LCM denoiser (LCMCompVisDenoiser), written from its definition: 50 LCM timesteps 19, 39, ...,
    999; the UNet sees the one nearest (in log-sigma) to the noise level; the boundary condition
    c_out * x0 + c_skip * x is taken at that timestep (scaled by 10, sigma_data 0.5)."""

    def __init__(self, config):
        from diffusers import EulerDiscreteScheduler
        acp = EulerDiscreteScheduler.from_config(config).alphas_cumprod.double().numpy()
        self.grid = np.arange(19, 1000, 20)
        self.sigmas = np.sqrt((1 - acp[self.grid]) / acp[self.grid])
        self.v = config["prediction_type"] == "v_prediction"

    def sigma_to_t(self, sigma):
        return int(self.grid[np.abs(np.log(self.sigmas) - math.log(sigma)).argmin()])

    def t_to_sigma(self, t):
        k = min(max((t - 19) / 20, 0.0), 49.0)
        lo, hi = math.floor(k), math.ceil(k)
        w = k - lo
        return math.exp((1 - w) * math.log(self.sigmas[lo]) + w * math.log(self.sigmas[hi]))

    def get_sigmas(self, n):
        return [self.t_to_sigma(t) for t in np.linspace(999, 19, n)] + [0.0]

    def denoise(self, x, sigma):
        sigma = float(sigma)
        t = self.sigma_to_t(sigma)
        out = model(x / math.sqrt(sigma**2 + 1.0), torch.tensor(float(t)))
        if self.v:  # (A1111 itself reads every output as epsilon; we convert v-prediction properly)
            x0 = x / (sigma**2 + 1.0) - out * sigma / math.sqrt(sigma**2 + 1.0)
        else:
            x0 = x - out * sigma
        st = 10.0 * t
        c_skip, c_out = 0.25 / (st**2 + 0.25), st / math.sqrt(st**2 + 0.25)
        return c_out * x0 + c_skip * x


def draw(generators):
    return torch.cat([torch.randn((1,) + SHAPE[1:], generator=g) for g in generators])


def churn(x, s, i, generators, s_churn, s_tmin, s_tmax, s_noise):
    """k-diffusion's start of step i in sample_euler/heun/dpm_2: (x_hat, sigma_hat). eps is drawn on every step,
    in float32 as k-diffusion computes; the window test compares the float32 sigma."""
    sigma = torch.tensor(s[i], dtype=torch.float32)
    gamma = min(s_churn / (len(s) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    eps = draw(generators) * s_noise
    hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + eps * (hat**2 - sigma**2) ** 0.5
    return x, float(hat)


def ref_sample(name, ref, x, sigmas, generators, brownian, eta=1.0, s_noise=1.0, s_churn=0.0, s_tmin=0.0,
               s_tmax=math.inf, sigma_range=None):
    s = [float(v) for v in sigmas]
    n = len(s) - 1
    D = ref.denoise
    if name == "Euler":
        for i in range(n):
            x, hat = churn(x, s, i, generators, s_churn, s_tmin, s_tmax, s_noise)
            x = x + (x - D(x, hat)) / hat * (s[i + 1] - hat)
    elif name == "Euler a":  # A1111 passes no s_noise to Euler a
        for i in range(n):
            den = D(x, s[i])
            down, up = ancestral(s[i], s[i + 1], eta)
            x = x + (x - den) / s[i] * (down - s[i])
            if s[i + 1] > 0:
                x = x + draw(generators) * up
    elif name == "LCM":
        for i in range(n):
            x = D(x, s[i])
            if s[i + 1] > 0:
                x = x + s[i + 1] * draw(generators)
    elif name == "LMS":
        from scipy import integrate
        ds = []
        for i in range(n):
            ds.append((x - D(x, s[i])) / s[i])
            order = min(i + 1, 4)
            ds = ds[-order:]
            coeffs = []
            for j in range(order):
                def lagrange(tau, j=j, i=i, order=order):
                    p = 1.0
                    for k in range(order):
                        if k != j:
                            p *= (tau - s[i - k]) / (s[i - j] - s[i - k])
                    return p
                coeffs.append(integrate.quad(lagrange, s[i], s[i + 1], epsrel=1e-4)[0])
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    elif name == "Heun":
        for i in range(n):
            x, hat = churn(x, s, i, generators, s_churn, s_tmin, s_tmax, s_noise)
            d = (x - D(x, hat)) / hat
            dt = s[i + 1] - hat
            if s[i + 1] == 0:
                x = x + d * dt
            else:
                x2 = x + d * dt
                d2 = (x2 - D(x2, s[i + 1])) / s[i + 1]
                x = x + (d + d2) / 2 * dt
    elif name == "DPM2":
        for i in range(n):
            x, hat = churn(x, s, i, generators, s_churn, s_tmin, s_tmax, s_noise)
            d = (x - D(x, hat)) / hat
            if s[i + 1] == 0:
                x = x + d * (s[i + 1] - hat)
            else:
                mid = math.exp(0.5 * (math.log(hat) + math.log(s[i + 1])))
                x2 = x + d * (mid - hat)
                d2 = (x2 - D(x2, mid)) / mid
                x = x + d2 * (s[i + 1] - hat)
    elif name == "DPM2 a":
        for i in range(n):
            den = D(x, s[i])
            down, up = ancestral(s[i], s[i + 1], eta)
            d = (x - den) / s[i]
            if down == 0:
                x = x + d * (down - s[i])
            else:
                mid = math.exp(0.5 * (math.log(s[i]) + math.log(down)))
                x2 = x + d * (mid - s[i])
                d2 = (x2 - D(x2, mid)) / mid
                x = x + d2 * (down - s[i])
                x = x + draw(generators) * s_noise * up
    elif name == "DPM++ 2S a":
        for i in range(n):
            den = D(x, s[i])
            down, up = ancestral(s[i], s[i + 1], eta)
            if down == 0:
                x = x + (x - den) / s[i] * (down - s[i])
            else:  # DPM-Solver++(2S) in t = -log(sigma), r = 1/2
                t, t_next = -math.log(s[i]), -math.log(down)
                h = t_next - t
                t_mid = t + 0.5 * h
                x2 = (math.exp(-t_mid) / math.exp(-t)) * x - math.expm1(-0.5 * h) * den
                den2 = D(x2, math.exp(-t_mid))
                x = (math.exp(-t_next) / math.exp(-t)) * x - math.expm1(-h) * den2
            if s[i + 1] > 0:
                x = x + draw(generators) * s_noise * up
    elif name == "Restart":  # A1111's restart_sampler: Heun steps, with restarts from 20 steps on
        def karras_ref(k, lo, hi, rho=7.0):
            a, b = hi ** (1 / rho), lo ** (1 / rho)
            return [(a + j / (k - 1) * (b - a)) ** rho for j in range(k)] + [0.0]

        sig, restarts = s, {}
        if n >= 20:
            seg, times = (n // 4, 2) if n >= 36 else (9, 1)
            sig = karras_ref(n - seg * times, s[-2], s[0])
            restarts = {int(np.argmin(np.abs(np.array(sig) - 0.1))): (seg + 1, times, 2.0)}
        pairs = []
        for i in range(len(sig) - 1):
            pairs.append((sig[i], sig[i + 1]))
            if i + 1 in restarts:
                levels, times, top = restarts[i + 1]
                hi = int(np.argmin(np.abs(np.array(sig) - top)))
                if hi < i + 1:
                    ramp = karras_ref(levels, sig[i + 1], sig[hi])[:-1]
                    for _ in range(times):
                        pairs += list(zip(ramp[:-1], ramp[1:]))
        last = None
        for old, new in pairs:
            if last is None:
                last = old
            elif last < old:
                x = x + draw(generators) * math.sqrt(old**2 - last**2)
            d = (x - D(x, old)) / old
            if new == 0:
                x = x + d * (new - old)
            else:
                x2 = x + d * (new - old)
                x = x + (d + (x2 - D(x2, new)) / new) / 2 * (new - old)
            last = new
    elif name == "DPM fast":  # k-diffusion's DPMSolver.dpm_solver_fast over the pass's sigma range
        lo, hi = sigma_range or (ref.tab.sigma_min, ref.tab.sigma_max)  # txt2img: the model's whole range
        nfe = n
        m = nfe // 3 + 1
        ts = [-math.log(hi) + k / m * (math.log(hi) - math.log(lo)) for k in range(m + 1)]
        orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
        sg = lambda t: math.exp(-t)  # noqa: E731
        eps = lambda x, t: (x - D(x, sg(t))) / sg(t)  # noqa: E731
        for i, order in enumerate(orders):
            t, t_next = ts[i], ts[i + 1]
            if eta:
                sd, _ = ancestral(sg(t), sg(t_next), eta)
                t_to = min(ts[-1], -math.log(sd)) if sd > 0 else ts[-1]
                su = math.sqrt(max(sg(t_next) ** 2 - sg(t_to) ** 2, 0.0))
            else:
                t_to, su = t_next, 0.0
            h = t_to - t
            e = eps(x, t)
            if order == 1:
                x_new = x - sg(t_to) * math.expm1(h) * e
            elif order == 2:
                s1 = t + h / 2
                e1 = eps(x - sg(s1) * math.expm1(h / 2) * e, s1)
                x_new = x - sg(t_to) * math.expm1(h) * e - sg(t_to) * math.expm1(h) * (e1 - e)
            else:
                r1, r2 = 1 / 3, 2 / 3
                s1, s2 = t + r1 * h, t + r2 * h
                e1 = eps(x - sg(s1) * math.expm1(r1 * h) * e, s1)
                u2 = x - sg(s2) * math.expm1(r2 * h) * e - sg(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (e1 - e)
                e2 = eps(u2, s2)
                x_new = x - sg(t_to) * math.expm1(h) * e - sg(t_to) / r2 * (math.expm1(h) / h - 1) * (e2 - e)
            x = x_new + (draw(generators) * su * s_noise if eta else 0.0)
    elif name == "DPM++ 2M":
        old, h_last = None, None
        for i in range(n):
            den = D(x, s[i])
            if s[i + 1] == 0:
                x = den
                continue
            h = math.log(s[i]) - math.log(s[i + 1])
            if old is None:
                x = (s[i + 1] / s[i]) * x - math.expm1(-h) * den
            else:
                r = h_last / h
                dd = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
                x = (s[i + 1] / s[i]) * x - math.expm1(-h) * dd
            old, h_last = den, h
    elif name == "DPM++ SDE":
        # in float32 torch scalars as k-diffusion computes them: the Brownian tree is queried at
        # exactly these noise levels, and a rough path is sensitive to the last bit
        f32 = lambda v: torch.tensor(v, dtype=torch.float32)
        sigma_fn, t_fn = (lambda t: t.neg().exp()), (lambda sg: sg.log().neg())
        for i in range(n):
            den = D(x, s[i])
            if s[i + 1] == 0:
                x = x + (x - den) / s[i] * (s[i + 1] - s[i])
                continue
            t, t_next = t_fn(f32(s[i])), t_fn(f32(s[i + 1]))
            sm = t + 0.5 * (t_next - t)
            down, up = ancestral(float(sigma_fn(t)), float(sigma_fn(sm)), eta)
            x2 = (down / float(sigma_fn(t))) * x - (math.expm1(float(t) + math.log(down)) if down else -1.0) * den
            x2 = x2 + brownian(sigma_fn(t), sigma_fn(sm)) * s_noise * up
            den2 = D(x2, float(sigma_fn(sm)))
            down, up = ancestral(float(sigma_fn(t)), float(sigma_fn(t_next)), eta)
            x = (down / float(sigma_fn(t))) * x - (math.expm1(float(t) + math.log(down)) if down else -1.0) * den2
            x = x + brownian(sigma_fn(t), sigma_fn(t_next)) * s_noise * up
    elif name in ("DPM++ 2M SDE", "DPM++ 2M SDE Heun"):
        old, h_last = None, None
        for i in range(n):
            den = D(x, s[i])
            if s[i + 1] == 0:
                x = den
            else:
                h = math.log(s[i]) - math.log(s[i + 1])
                eh = eta * h
                x = s[i + 1] / s[i] * math.exp(-eh) * x - math.expm1(-h - eh) * den
                if old is not None:
                    r = h_last / h
                    if name.endswith("Heun"):
                        x = x + (-math.expm1(-h - eh) / (-h - eh) + 1) * (1 / r) * (den - old)
                    else:
                        x = x + 0.5 * -math.expm1(-h - eh) * (1 / r) * (den - old)
                if eta:
                    x = x + brownian(s[i], s[i + 1]) * s[i + 1] * math.sqrt(-math.expm1(-2 * eh)) * s_noise
            old, h_last = den, (math.log(s[i]) - math.log(s[i + 1])) if s[i + 1] else None
    elif name == "DPM++ 3M SDE":
        d1m, d2m, h1, h2 = None, None, None, None
        for i in range(n):
            den = D(x, s[i])
            h = None
            if s[i + 1] == 0:
                x = den
            else:
                h = math.log(s[i]) - math.log(s[i + 1])
                he = h * (eta + 1)
                x = math.exp(-he) * x - math.expm1(-he) * den
                if h2 is not None:
                    r0, r1 = h1 / h, h2 / h
                    d1_0, d1_1 = (den - d1m) / r0, (d1m - d2m) / r1
                    d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                    d2 = (d1_0 - d1_1) / (r0 + r1)
                    phi2 = math.expm1(-he) / he + 1
                    phi3 = phi2 / he - 0.5
                    x = x + phi2 * d1 - phi3 * d2
                elif h1 is not None:
                    x = x + (math.expm1(-he) / he + 1) * (den - d1m) / (h1 / h)
                if eta:
                    x = x + brownian(s[i], s[i + 1]) * s[i + 1] * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
            d1m, d2m, h1, h2 = den, d1m, h, h1
    else:
        raise AssertionError(name)
    return x


K_SAMPLERS = [s.name for s in SAMPLERS if s.kind == "k"]


@pytest.mark.parametrize("name", K_SAMPLERS)
@pytest.mark.parametrize("schedule,d,config", [
    ("automatic", None, SD1), ("karras", None, SD1), ("kl_optimal", None, SD1), ("exponential", 0.5, SD1),
    ("uniform", 0.37, SD2V),
])
def test_matches_k_diffusion_step_for_step(name, schedule, d, config):
    """Our plan driven through diffusers lands where k-diffusion's update lands, noise included."""
    plan = plan_for(name, schedule, steps=6, d=d, config=config)
    sigmas = plan.sigmas
    init = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7)) if d else None
    noise = initial_noise()
    ours = run(plan, noise.clone(), init)
    # the Brownian tree spans the whole schedule, also when only its tail runs (as in A1111)
    full = plan_for(name, schedule, steps=plan_total(6, d), config=config).sigmas if d else sigmas
    brownian = BrownianNoise(SHAPE, float(full[full > 0].min()), float(full.max()), SEEDS)
    x0 = noise * float(sigmas[0]) if init is None else init + noise * float(sigmas[0])
    ref = RefLCM(config) if name == "LCM" else Ref(config)
    tail = (float(sigmas[-2]), float(sigmas[0])) if d else None
    expected = ref_sample(name, ref, x0, sigmas, gens(), brownian, sigma_range=tail)
    if plan.layout_is_vp:  # DPMSolverMultistep works on x / sqrt(sigma^2 + 1)
        ours = ours * math.sqrt(float(sigmas[-1]) ** 2 + 1.0)
    assert torch.allclose(ours, expected, atol=2e-4, rtol=1e-3), (ours - expected).abs().max()


ETA_SAMPLERS = ["Euler a", "DPM2 a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a",
                "DPM++ 3M SDE", "DPM fast"]


def _compare(name, schedule, d, config, steps=6, **params):
    plan = plan_for(name, schedule, steps=steps, d=d, config=config, **params)
    sigmas = plan.sigmas
    init = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7)) if d else None
    noise = initial_noise()
    ours = run(plan, noise.clone(), init)
    full = plan_for(name, schedule, steps=plan_total(steps, d), config=config).sigmas if d else sigmas
    brownian = BrownianNoise(SHAPE, float(full[full > 0].min()), float(full.max()), SEEDS)
    x0 = noise * float(sigmas[0]) if init is None else init + noise * float(sigmas[0])
    if params.get("s_tmax") == 0:  # A1111's 0 means infinity
        params = {**params, "s_tmax": math.inf}
    tail = (float(sigmas[-2]), float(sigmas[0])) if d else None
    expected = ref_sample(name, Ref(config), x0, sigmas, gens(), brownian, sigma_range=tail, **params)
    if plan.layout_is_vp:
        ours = ours * math.sqrt(float(sigmas[-1]) ** 2 + 1.0)
    return ours, expected


@pytest.mark.parametrize("name", ETA_SAMPLERS)
@pytest.mark.parametrize("eta,s_noise,schedule,d,config", [
    (0.0, None, "automatic", None, SD1), (0.5, 0.8, "karras", 0.5, SD1), (1.7, None, "exponential", None, SD2V),
])
def test_eta_matches_k_diffusion(name, eta, s_noise, schedule, d, config):
    """k-diffusion's eta (get_ancestral_step / the SDE's eta * h) and s_noise, step for step, noise included."""
    params = {"eta": eta} if s_noise is None else {"eta": eta, "s_noise": s_noise}
    if name == "DPM2 a" and eta > 1:  # some steps would have sigma_down 0: refused, not run differently
        with pytest.raises(InvalidRequest, match="eta"):
            plan_for(name, schedule, steps=6, d=d, config=config, **params)
        return
    ours, expected = _compare(name, schedule, d, config, **params)
    assert torch.allclose(ours, expected, atol=2e-4, rtol=1e-3), (ours - expected).abs().max()


@pytest.mark.parametrize("name", ETA_SAMPLERS)
def test_eta_zero_is_deterministic_and_differs_from_one(name):
    zero = run(plan_for(name, steps=6, eta=0.0), initial_noise())
    other_noise = run(plan_for(name, steps=6, eta=0.0, seeds=[99, 100]), initial_noise())
    assert torch.equal(zero, other_noise)  # no noise is added, whatever the generators or Brownian trees hold
    one = run(plan_for(name, steps=6, eta=1.0), initial_noise())
    assert not torch.allclose(zero, one)
    assert torch.equal(run(plan_for(name, steps=6), initial_noise()), one)  # eta None: A1111's eta_ancestral, 1


def test_s_noise_acts_where_a1111_passes_it():
    base = run(plan_for("DPM2 a", steps=5), initial_noise())
    assert not torch.allclose(run(plan_for("DPM2 a", steps=5, s_noise=0.5), initial_noise()), base)
    base = run(plan_for("DPM++ 2M SDE", steps=5), initial_noise())
    assert not torch.allclose(run(plan_for("DPM++ 2M SDE", steps=5, s_noise=0.5), initial_noise()), base)
    base = run(plan_for("Euler a", steps=5), initial_noise())  # A1111 does not pass s_noise to Euler a
    assert torch.equal(run(plan_for("Euler a", steps=5, s_noise=0.5), initial_noise()), base)


# ---- churn (Euler, Heun, DPM2) ---------------------------------------------------------------------

CHURN_SAMPLERS = ["Euler", "Heun", "DPM2"]


def _gammas(plan, s_churn, s_tmin=0.0, s_tmax=math.inf):
    s = plan.sigmas
    return [min(s_churn / (len(s) - 1), 2**0.5 - 1) if s_tmin <= v <= s_tmax else 0.0 for v in s[:-1]]


@pytest.mark.parametrize("name", CHURN_SAMPLERS)
@pytest.mark.parametrize("params,schedule,d,config", [
    ({"s_churn": 1.0}, "automatic", None, SD1),
    ({"s_churn": 40.0, "s_noise": 0.7}, "karras", 0.5, SD1),  # gamma capped at sqrt(2) - 1
    ({"s_churn": 3.0, "s_tmin": 0.5, "s_tmax": 5.0}, "exponential", None, SD2V),  # a window inside the schedule
    ({"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 0.0, "s_noise": 1.3}, "uniform", 0.37, SD1),  # s_tmax 0: no upper end
])
def test_churn_matches_k_diffusion(name, params, schedule, d, config):
    """k-diffusion's churn step for step, noise included: eps drawn before the model call on every step, the
    model called at sigma_hat, the step taken from the churned sample."""
    plan = plan_for(name, schedule, steps=6, d=d, config=config, **params)
    tmax = params.get("s_tmax") or math.inf
    gammas = _gammas(plan, params["s_churn"], params.get("s_tmin", 0.0), tmax)
    assert any(gammas)
    if "s_tmin" in params:  # the window really leaves some steps unchurned
        assert not all(gammas)
    ours, expected = _compare(name, schedule, d, config, **params)
    assert torch.allclose(ours, expected, atol=2e-4, rtol=1e-3), (ours - expected).abs().max()
    assert not torch.allclose(ours, _compare(name, schedule, d, config)[0], atol=1e-3)


@pytest.mark.parametrize("name", CHURN_SAMPLERS)
def test_churn_calls_the_model_at_sigma_hat(name):
    base, plan = plan_for(name, steps=6), plan_for(name, steps=6, s_churn=2.0, s_tmin=1.0)
    tab = NoiseTable(plan.scheduler.alphas_cumprod.numpy())
    gammas = _gammas(plan, 2.0, 1.0)
    stride = 1 if name == "Euler" else 2
    assert len(plan.timesteps) == len(base.timesteps)  # the same number of model calls
    for k, g in enumerate(gammas):
        hat = float(plan.sigmas[k]) * (1 + g)
        assert float(plan.timesteps[k * stride]) == pytest.approx(float(tab.sigma_to_t(hat)), abs=1e-3)
        if g == 0:
            assert plan.timesteps[k * stride] == base.timesteps[k * stride]
        elif name == "DPM2" and k * stride + 1 < len(plan.timesteps):  # the midpoint moves with sigma_hat
            mid = math.sqrt(hat * float(plan.sigmas[k + 1]))
            assert float(plan.timesteps[k * stride + 1]) == pytest.approx(float(tab.sigma_to_t(mid)), abs=1e-3)
    assert gammas[0] > 0 and plan.timesteps[0] == 999.0  # sigma_hat above sigma_max: the model's last timestep


@pytest.mark.parametrize("name", CHURN_SAMPLERS)
def test_churn_is_seeded_per_image(name):
    a = run(plan_for(name, steps=5, s_churn=1.5), initial_noise())
    assert torch.equal(a, run(plan_for(name, steps=5, s_churn=1.5), initial_noise()))
    b = run(plan_for(name, steps=5, s_churn=1.5, seeds=[SEEDS[0], 99]), initial_noise())
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])
    with pytest.raises(ValueError, match="generator"):
        make_plan(SAMPLERS_BY_NAME[name], SCHEDULES_BY_NAME["automatic"], SD1, steps=5,
                  params=SamplerParams(s_churn=1.5))


@pytest.mark.parametrize("name", CHURN_SAMPLERS)
def test_churn_zero_is_the_plain_sampler(name):
    """s_churn 0 (whatever s_noise, s_tmin, s_tmax say) runs the diffusers step untouched, drawing no noise; a
    window that holds no step changes nothing either (its noise is drawn, as in k-diffusion, and unused)."""
    from diffusers import EulerDiscreteScheduler, HeunDiscreteScheduler, KDPM2DiscreteScheduler
    parent = {"Euler": EulerDiscreteScheduler, "Heun": HeunDiscreteScheduler, "DPM2": KDPM2DiscreteScheduler}[name]
    plain = plan_for(name, steps=6)
    plain.scheduler.__class__ = parent
    base = run(plain, initial_noise())
    for params in ({}, {"s_churn": 0.0, "s_noise": 0.5, "s_tmin": 1.0, "s_tmax": 3.0}, {"s_churn": 5.0, "s_tmin": 1e3}):
        plan = plan_for(name, steps=6, **params)
        assert (plan.scheduler.churn is None) == (not params.get("s_churn"))
        assert torch.equal(plan.timesteps, plain.timesteps)
        assert torch.equal(run(plan, initial_noise()), base), params


# ---- LCM ------------------------------------------------------------------------------------------

def test_lcm_noise_levels_and_unet_timesteps_are_a1111s():
    ref = RefLCM(SD1)
    plan = plan_for("LCM", steps=4)
    assert np.allclose(plan.sigmas.numpy(), ref.get_sigmas(4), rtol=1e-5)  # linspace(999, 19), interpolated
    assert plan.timesteps.tolist() == [999.0, 679.0, 339.0, 19.0]  # 672.3 and 345.7 snapped to LCM timesteps
    assert plan.scheduler.sigmas[1] != pytest.approx(ref.sigmas[(679 - 19) // 20])  # re-noised unsnapped
    # the schedule types see the LCM denoiser: its sigma range (timesteps 19..999) and its 50 levels
    karras = plan_for("LCM", "karras", steps=5).sigmas.numpy()
    lo, hi = ref.sigmas[0] ** (1 / 7), ref.sigmas[-1] ** (1 / 7)
    assert np.allclose(karras, [(hi + i / 4 * (lo - hi)) ** 7 for i in range(5)] + [0.0], rtol=1e-5)
    simple = plan_for("LCM", "simple", steps=5).sigmas.numpy()
    assert np.allclose(simple, [ref.sigmas[-(1 + int(x * 10))] for x in range(5)] + [0.0], rtol=1e-5)
    assert np.allclose(plan_for("LCM", "normal", steps=7).sigmas.numpy(), ref.get_sigmas(7), rtol=1e-5)
    for schedule in ("automatic", "karras", "sgm_uniform", "beta"):
        ts = plan_for("LCM", schedule, steps=9).timesteps.numpy()
        assert set(ts.tolist()) <= {float(t) for t in ref.grid}, schedule


@pytest.mark.parametrize("schedule,d,config", [
    ("automatic", None, SD1), ("automatic", 0.5, SD1), ("karras", 0.37, SD1), ("sgm_uniform", None, SD2V),
])
def test_lcm_matches_a1111_step_for_step(schedule, d, config):
    plan = plan_for("LCM", schedule, steps=5, d=d, config=config)
    init = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7)) if d else None
    noise = initial_noise()
    ours = run(plan, noise.clone(), init)
    s0 = float(plan.sigmas[0])
    expected = ref_sample("LCM", RefLCM(config), noise * s0 if init is None else init + noise * s0, plan.sigmas,
                          gens(), None)
    assert torch.allclose(ours, expected, atol=1e-4, rtol=1e-4), (ours - expected).abs().max()


def test_lcm_hires_rule_and_evaluations():
    plan = plan_for("LCM", steps=4, d=0.5)
    full = plan_for("LCM", steps=8)
    assert plan.steps == 4 and plan.evaluations == 4
    assert np.allclose(plan.sigmas.numpy(), full.sigmas.numpy()[4:])
    assert plan.timesteps.tolist() == full.timesteps.tolist()[4:]
    assert plan.start_sigma == pytest.approx(float(full.sigmas[4]))
    calls = []
    run(plan, initial_noise(), torch.zeros(SHAPE), calls)
    assert calls == [1, 2, 3, 4]
    one = plan_for("LCM", steps=1)  # one step: straight to the denoised estimate, no noise drawn
    assert one.evaluations == 1 and one.sigmas[-1] == 0


def plan_total(steps, d):
    return int(steps / min(d, 0.999))


def _ref_ddim(x, timesteps, acp, eta, generators):
    """A1111's DDIM update over the given (descending) evaluation timesteps, each stepping to t - stride."""
    for t, t_prev in timesteps:
        a, ap = acp[t], acp[t_prev]
        e = model(x * 1.0, torch.tensor(float(t)))
        sigma = eta * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
        x0 = (x - math.sqrt(1 - a) * e) / math.sqrt(a)
        x = math.sqrt(ap) * x0 + math.sqrt(1 - ap - sigma**2) * e
        if sigma:
            x = x + sigma * draw(generators)
    return x


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_runs_a1111s_timesteps(eta):
    plan = plan_for("DDIM", steps=20, eta=eta)
    grid = a1111_timestep_grid(20)
    assert grid[0] == 1 and grid[-1] == 951
    assert plan.timesteps.tolist() == list(grid[1:][::-1])  # A1111 evaluates 951 ... 51, ending at t=1
    noise = initial_noise()
    ours = run(plan, noise.clone())
    acp = plan.scheduler.alphas_cumprod.double().numpy()
    pairs = list(zip(grid[1:][::-1], grid[:-1][::-1]))
    expected = _ref_ddim(noise.clone(), pairs, acp, eta, gens())
    assert torch.allclose(ours, expected.float(), atol=1e-4)


@pytest.mark.parametrize("steps,eta,config", [(20, 0.0, SD1), (9, 0.6, SD1), (12, 0.0, SD2V)])
def test_ddim_cfgpp_matches_a1111(steps, eta, config):
    """A1111's ddim_cfgpp: x0 from the guided output, the step re-noised along the unconditional noise."""
    plan = plan_for("DDIM CFG++", steps=steps, eta=eta, config=config)
    grid = a1111_timestep_grid(steps)
    assert plan.timesteps.tolist() == list(grid[1:][::-1])  # DDIM's grid
    noise = initial_noise()
    ours = run(plan, noise.clone())
    acp = plan.scheduler.alphas_cumprod.double().numpy()
    v = config["prediction_type"] == "v_prediction"
    x, generators = noise.clone(), gens()
    for t, tp in zip(grid[1:][::-1], grid[:-1][::-1]):
        a, ap = acp[t], acp[tp]
        tt = torch.tensor(float(t))
        e, eu = model(x, tt), uncond_model(x, tt)
        if v:  # A1111's v denoiser hands the sampler noise predictions
            e, eu = math.sqrt(a) * e + math.sqrt(1 - a) * x, math.sqrt(a) * eu + math.sqrt(1 - a) * x
        sigma = eta * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
        x0 = (x - math.sqrt(1 - a) * e) / math.sqrt(a)
        x = math.sqrt(ap) * x0 + math.sqrt(1 - ap - sigma**2) * eu
        if sigma:
            x = x + sigma * draw(generators)
    assert torch.allclose(ours, x.float(), atol=1e-4)
    with pytest.raises(ValueError, match="unconditional"):
        plan.scheduler.step(model(noise, plan.timesteps[0]), plan.timesteps[0], noise)


@pytest.mark.parametrize("steps", [3, 9, 27])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_on_a_grid_whose_top_interval_is_shorter(steps, eta):
    """1000 // steps divides 999: the top grid point is clipped from 1000 to 999, so the first step is one
    timestep shorter than the stride; every step still lands exactly on the grid point below."""
    grid = a1111_timestep_grid(steps)
    assert grid[-1] == 999 and grid[-1] - grid[-2] == 1000 // steps - 1
    plan = plan_for("DDIM", steps=steps, eta=eta)
    noise = initial_noise()
    ours = run(plan, noise.clone())
    acp = plan.scheduler.alphas_cumprod.double().numpy()
    expected = _ref_ddim(noise.clone(), list(zip(grid[1:][::-1], grid[:-1][::-1])), acp, eta, gens())
    assert torch.allclose(ours, expected.float(), atol=1e-4)


@pytest.mark.parametrize("steps", [10, 3, 9, 27])
def test_plms_matches_a1111(steps):
    plan = plan_for("PLMS", steps=steps)
    grid = a1111_timestep_grid(steps)
    acp = plan.scheduler.alphas_cumprod.double().numpy()
    x = initial_noise()
    ours = run(plan, x.clone())

    def prev(x, e, t, tp):
        a, ap = acp[t], acp[tp]
        return math.sqrt(ap) * (x - math.sqrt(1 - a) * e) / math.sqrt(a) + math.sqrt(1 - ap) * e

    evals = list(grid[::-1])  # 901 ... 1
    old = []
    for i in range(len(evals) - 1):
        t, tp = evals[i], evals[i + 1]
        e = model(x, torch.tensor(float(t)))
        if not old:
            x_p = prev(x, e, t, tp)
            e_p = (e + model(x_p, torch.tensor(float(tp)))) / 2
        elif len(old) == 1:
            e_p = (3 * e - old[-1]) / 2
        elif len(old) == 2:
            e_p = (23 * e - 16 * old[-1] + 5 * old[-2]) / 12
        else:
            e_p = (55 * e - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
        x = prev(x, e_p, t, tp)
        old = (old + [e])[-3:]
    assert len(plan.timesteps) == len(evals)  # one extra evaluation for the first (improved Euler) step
    assert torch.allclose(ours, x.float(), atol=1e-4)


# ---- schedules -------------------------------------------------------------------------------

def test_karras_changes_the_sigmas_and_follows_the_formula():
    plan_a = plan_for("Euler", "automatic", steps=10)
    plan_k = plan_for("Euler", "karras", steps=10)
    tab = NoiseTable(plan_k.scheduler.alphas_cumprod.numpy())
    rho, lo, hi = 7.0, tab.sigma_min, tab.sigma_max
    expected = [(hi ** (1 / rho) + i / 9 * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(10)] + [0.0]
    assert np.allclose(plan_k.sigmas.numpy(), expected, rtol=1e-5)
    assert not np.allclose(plan_a.sigmas.numpy(), plan_k.sigmas.numpy())
    assert plan_k.scheduler.sigmas.tolist() == pytest.approx(expected, rel=1e-5)  # really installed


def test_uniform_is_k_diffusion_discretisation():
    plan = plan_for("Euler", "automatic", steps=3)
    tab = NoiseTable(plan.scheduler.alphas_cumprod.numpy())
    assert plan.sigmas[0] == pytest.approx(tab.sigma_max, rel=1e-6)
    assert plan.sigmas[2] == pytest.approx(tab.sigma_min, rel=1e-5)  # linspace(999, 0, 3) ends at t=0
    assert plan.sigmas[-1] == 0
    assert plan.timesteps.tolist() == pytest.approx([999.0, 499.5, 0.0], abs=1e-3)  # continuous, unrounded


def test_schedules_have_their_a1111_shape():
    tab = NoiseTable(plan_for("Euler").scheduler.alphas_cumprod.numpy())
    for spec in SCHEDULES[1:]:
        s = spec.sigmas(10, tab, "sd1")
        assert np.all(np.diff(s) <= 0), spec.name
        assert s[0] == pytest.approx(tab.sigma_max, rel=2e-3) or spec.name == "ddim"
    assert SCHEDULES_BY_NAME["kl_optimal"].sigmas(10, tab, "sd1")[-1] == pytest.approx(tab.sigma_min)
    assert len(SCHEDULES_BY_NAME["ddim"].sigmas(30, tab, "sd1")) == 32  # 1000 // 30 = 33: 31 steps, as A1111
    assert SCHEDULES_BY_NAME["align_your_steps"].sigmas(10, tab, "sd1")[1] != \
        SCHEDULES_BY_NAME["align_your_steps"].sigmas(10, tab, "sdxl")[1]
    assert np.allclose(SCHEDULES_BY_NAME["polyexponential"].sigmas(8, tab, "sd1"),
                       SCHEDULES_BY_NAME["exponential"].sigmas(8, tab, "sd1"))


def test_dpm2_discards_the_penultimate_sigma():
    dpm2 = plan_for("DPM2", "karras", steps=5).sigmas.numpy()
    assert len(dpm2) == 6
    tab = NoiseTable(plan_for("Euler").scheduler.alphas_cumprod.numpy())
    k6 = karras(6, tab, "sd1")
    assert np.allclose(dpm2, np.concatenate([k6[:-2], k6[-1:]]), rtol=1e-5)


# ---- hires fixed-steps rule and evaluation counts ------------------------------------------------

def test_hires_fixed_steps_20_at_half_strength():
    plan = plan_for("Euler", steps=20, d=0.5)
    full = plan_for("Euler", steps=40)
    assert plan.steps == 20
    assert np.allclose(plan.sigmas.numpy(), full.sigmas.numpy()[20:])
    assert plan.start_sigma == pytest.approx(float(full.sigmas[20]))
    calls = []
    run(plan, initial_noise(), torch.zeros(SHAPE), calls)
    assert len(calls) == 20 and calls == list(range(1, 21))


def test_hires_strength_one_uses_0999_rule():
    plan = plan_for("Euler", steps=20, d=1.0)
    assert plan.steps == 20
    assert np.allclose(plan.sigmas.numpy(), plan_for("Euler", steps=20).sigmas.numpy())  # int(20 / .999) == 20


def test_hires_odd_strength():
    plan = plan_for("DPM++ 2M", "karras", steps=20, d=0.37)
    total = int(20 / 0.37)
    assert total == 54
    full = plan_for("DPM++ 2M", "karras", steps=total)
    assert np.allclose(plan.sigmas.numpy(), full.sigmas.numpy()[total - 20:])
    assert plan.evaluations == 20


@pytest.mark.parametrize("name", ["Heun", "DPM2", "DPM2 a", "DPM++ SDE", "DPM++ 2S a"])
def test_second_order_evaluations(name):
    for d in (None, 0.5):
        plan = plan_for(name, steps=10, d=d)
        calls = []
        run(plan, initial_noise(), torch.zeros(SHAPE) if d else None, calls)
        assert len(calls) == 2 * 10 - 1  # as k-diffusion: one evaluation for the last step to sigma 0
        assert calls[-1] == 10 and sorted(set(calls)) == list(range(1, 11))


def test_dpmpp_2s_a_takes_one_call_on_steps_whose_sigma_down_is_zero():
    """k-diffusion's 2S a falls back to one Euler step where eta makes sigma_down 0 (eta above 1): no midpoint call."""
    calm, wild = plan_for("DPM++ 2S a", steps=8, eta=1.0), plan_for("DPM++ 2S a", steps=8, eta=1.7)
    assert calm.evaluations == 2 * 8 - 1
    assert 8 <= wild.evaluations < calm.evaluations
    assert [wild.user_step(i) for i in range(wild.evaluations)][-1] == 8


@pytest.mark.parametrize("steps,d,schedule", [(20, None, "automatic"), (24, 0.5, "exponential"), (40, None, "karras"),
                                               (12, None, "automatic")])
def test_restart_matches_a1111(steps, d, schedule):
    """Below 20 steps Restart is Heun; from 20 it rebuilds a Karras schedule and climbs back once (from 36,
    twice) from the level nearest 0.1 to the one nearest 2, with fresh noise before each climb."""
    ours, expected = _compare("Restart", schedule, d, SD1, steps=steps)
    assert torch.allclose(ours, expected, atol=2e-4, rtol=1e-3), (ours - expected).abs().max()
    plan = plan_for("Restart", schedule, steps=steps, d=d)
    assert plan.evaluations == 2 * steps - 1 and plan.user_step(plan.evaluations - 1) == steps
    climbs = sum(1 for i in range(1, plan.evaluations) if plan.timesteps[i] > plan.timesteps[i - 1] + 1e-3)
    assert climbs == (0 if steps < 20 else 1 if steps < 36 else 2)
    other = run(plan_for("Restart", schedule, steps=steps, d=d, seeds=[5, 6]), initial_noise(),
                torch.zeros(SHAPE) if d else None)
    mine = run(plan_for("Restart", schedule, steps=steps, d=d), initial_noise(), torch.zeros(SHAPE) if d else None)
    assert torch.equal(mine, other) == (steps < 20)  # the climbs' noise comes from the image seeds


def test_first_order_evaluations_equal_steps():
    for name in ("Euler", "Euler a", "LMS", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ 3M SDE", "LCM", "DPM fast"):
        for d in (None, 0.5):
            assert plan_for(name, steps=12, d=d).evaluations == 12, name


def test_bad_denoising_strength():
    for d in (0.0, -1.0, float("nan")):
        with pytest.raises(InvalidRequest):
            plan_for("Euler", steps=10, d=d)


# ---- seeds -----------------------------------------------------------------------------------

STOCHASTIC = [s.name for s in SAMPLERS if s.stochastic] + ["DDIM"]


@pytest.mark.parametrize("name", STOCHASTIC)
def test_seeded_noise_is_deterministic(name):
    extra = {"eta": 0.5} if name == "DDIM" else {}
    steps = 20 if name == "Restart" else 5  # Restart draws noise only when it restarts, from 20 steps
    a = run(plan_for(name, steps=steps, **extra), initial_noise())
    b = run(plan_for(name, steps=steps, **extra), initial_noise())
    assert torch.equal(a, b)
    c = run(plan_for(name, steps=steps, seeds=[99, 100], **extra), initial_noise())
    assert not torch.allclose(a, c)


def test_brownian_noise_is_per_image():
    a = run(plan_for("DPM++ 2M SDE", steps=5, seeds=[5, 6]), initial_noise())
    b = run(plan_for("DPM++ 2M SDE", steps=5, seeds=[5, 7]), initial_noise())
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])


# ---- parameters ------------------------------------------------------------------------------

def test_parameter_validation():
    with pytest.raises(InvalidRequest, match="eta"):
        plan_for("DDIM", eta=-0.1)
    with pytest.raises(InvalidRequest, match="eta"):
        plan_for("Euler a", eta=float("nan"))
    plan_for("Euler a", eta=0.5)
    plan_for("DPM++ 3M SDE", eta=0.0, s_noise=0.5)
    with pytest.raises(InvalidRequest, match="eta"):
        plan_for("DPM2 a", eta=-1.0)
    with pytest.raises(InvalidRequest, match="eta"):  # found before sampling, whatever the schedule
        validate_params(SAMPLERS_BY_NAME["DPM2 a"], SamplerParams(eta=1.2))
    plan_for("Euler a", eta=3.0)
    plan_for("Euler", s_churn=1.0)
    with pytest.raises(InvalidRequest, match="s_churn"):
        plan_for("Heun", s_churn=-1.0)
    with pytest.raises(InvalidRequest, match="s_tmin"):
        plan_for("DPM2", s_churn=1.0, s_tmin=float("nan"))
    with pytest.raises(InvalidRequest, match="s_noise"):
        plan_for("Euler", s_noise=float("inf"))
    plan_for("LCM", eta=0.3, s_noise=0.5)  # LCM takes neither in A1111
    with pytest.raises(InvalidRequest, match="steps"):
        plan_for("Euler", steps=0)
    plan_for("Euler", eta=0.3, s_tmin=0.5, s_tmax=10.0)  # eta is ignored by Euler in A1111 too
    plan_for("Euler a", eta=1.0)


# ---- names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("given,sampler,schedule", [
    ((None, None, None), "Euler", "automatic"),
    ((None, "Euler a", None), "Euler a", "automatic"),
    (("DPM++ 2M", None, None), "DPM++ 2M", "automatic"),
    (("DPM++ 2M Karras", None, None), "DPM++ 2M", "automatic"),  # its own default is reported as Automatic
    (("DPM++ 2M Karras", None, "Exponential"), "DPM++ 2M", "exponential"),
    (("Euler a Karras", None, None), "Euler a", "karras"),
    (("Euler a karras", None, None), "Euler a", "karras"),
    (("DPM++ 2M SDE Exponential", None, None), "DPM++ 2M SDE", "automatic"),
    (("DPM++ 2M SDE Heun Karras", None, None), "DPM++ 2M SDE Heun", "karras"),
    (("Euler SGMUniform", None, None), "Euler", "sgm_uniform"),
    (("LMS Karras", None, ""), "LMS", "karras"),
    (("k_euler_a", None, None), "Euler a", "automatic"),
    (("k_dpmpp_2m", None, "karras"), "DPM++ 2M", "automatic"),
    (("euler A", None, "KARRAS"), "Euler a", "karras"),
    (("", "k_lms", "Uniform"), "LMS", "uniform"),
    (("Euler", None, "sgm_uniform"), "Euler", "sgm_uniform"),
    (("Euler", None, "SGM Uniform"), "Euler", "sgm_uniform"),
    (("DDIM", None, "Automatic"), "DDIM", "automatic"),
    (("LCM", None, None), "LCM", "automatic"),
    (("lcm", None, "Karras"), "LCM", "karras"),
    (("k_lcm", None, None), "LCM", "automatic"),
    (("LCM Karras", None, None), "LCM", "karras"),
])
def test_resolve(given, sampler, schedule):
    spec, sched = resolve(*given)
    assert (spec.name, sched.name) == (sampler, schedule)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownName) as e:
        resolve("Euler b")
    assert "DPM++ 2M" in e.value.valid and "Euler a" in e.value.valid
    with pytest.raises(UnknownName) as e:
        resolve("Euler", None, "Kerras")
    assert "Karras" in e.value.valid and "Automatic" in e.value.valid
    with pytest.raises(UnknownName):
        resolve("DPM adaptive")  # omitted: its step size adapts while it runs
    with pytest.raises(UnknownName):
        resolve_hires("nope", None, resolve("Euler"))


def test_unsupported_combination_names_the_supported():
    with pytest.raises(InvalidRequest) as e:
        resolve("DDIM", None, "Karras")
    assert e.value.valid == ["Automatic"] and "DDIM" in str(e.value)
    with pytest.raises(InvalidRequest):
        resolve("UniPC Karras")
    with pytest.raises(InvalidRequest) as e:
        make_plan(SAMPLERS_BY_NAME["PLMS"], SCHEDULES_BY_NAME["exponential"], SD1, steps=5)
    assert e.value.valid == ["Automatic"]
    with pytest.raises(InvalidRequest):
        resolve_hires("DDIM", None, resolve("DPM++ 2M", None, "Exponential"))


def test_resolve_hires():
    first = resolve("DPM++ 2M", None, "Exponential")
    assert resolve_hires(None, None, first) == first
    assert resolve_hires("", "", first) == first
    assert resolve_hires("Use same sampler", "Use same scheduler", first) == first
    s, sch = resolve_hires("Euler a", None, first)
    assert (s.name, sch.name) == ("Euler a", "exponential")
    s, sch = resolve_hires("Use same sampler", "karras", first)
    assert (s.name, sch.name) == ("DPM++ 2M", "automatic")
    s, sch = resolve_hires("k_euler", "Beta", first)
    assert (s.name, sch.name) == ("Euler", "beta")
    s, sch = resolve_hires("DDIM", None, resolve("Euler"))
    assert (s.name, sch.name) == ("DDIM", "automatic")


@pytest.mark.parametrize("sampler,schedule,label", [
    ("DPM++ 2M", None, "Karras"), ("DPM++ 2M SDE", None, "Exponential"), ("DPM2", None, "Karras"),
    ("Euler", None, "Automatic"), ("Euler a", "Karras", "Karras"), ("DPM++ 2M", "sgm_uniform", "SGM Uniform"),
    ("DDIM", None, "Automatic"), ("DPM++ 2M Karras", None, "Karras"),
])
def test_label_for_infotext(sampler, schedule, label):
    assert label_for_infotext(*resolve(sampler, None, schedule)) == label


def test_automatic_runs_the_default_schedule():
    assert np.allclose(plan_for("DPM++ 2M", "automatic", steps=8).sigmas, plan_for("DPM++ 2M", "karras", steps=8).sigmas)
    assert effective_schedule(*resolve("Euler")).name == "automatic"


def test_api_listings():
    samplers = api_samplers()
    assert [s["name"] for s in samplers][:3] == ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE"]
    by = {s["name"]: s for s in samplers}
    assert by["DPM++ 2M"] == {"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}}
    assert by["DPM2 a"]["options"] == {"scheduler": "karras", "discard_next_to_last_sigma": "True",
                                       "uses_ensd": "True", "second_order": "True"}
    assert by["Euler a"]["aliases"] == ["k_euler_a", "k_euler_ancestral"]
    assert samplers[-1] == {"name": "LCM", "aliases": ["k_lcm"], "options": {}}  # last, as in A1111
    assert all(isinstance(v, str) for s in samplers for v in s["options"].values())
    scheds = api_schedulers()
    assert scheds[0] == {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1.0,
                         "need_inner_model": False}
    assert {"name": "sgm_uniform", "label": "SGM Uniform", "aliases": ["SGMUniform"], "default_rho": -1.0,
            "need_inner_model": True} in scheds
    assert len(scheds) == 12
