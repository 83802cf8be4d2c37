"""A1111's UniPC options (`uni_pc_variant`, `uni_pc_skip_type`, `uni_pc_order`, `uni_pc_lower_order_final`),
as its `uni_pc.UniPC.sample(method="multistep")` takes them.

The solver itself is diffusers' UniPCMultistepScheduler (the same UniP-BH predictor and UniC corrector,
the same warm-up and final lower orders); these set its `solver_type`, `solver_order` and
`lower_order_final`, and lay out the pass's times as A1111's `get_time_steps`: uniform in continuous time
t (time_uniform), uniform in sqrt(t) (time_quadratic) or uniform in log-SNR (logSNR), t running from the
pass's start to 1/1000, the model seeing (t - 1/1000) * 1000. A1111's third variant `vary_coeff` is a
different update diffusers does not have: refused with a 4xx naming the option. Where A1111 stops (a pass
of fewer steps than the order) the pass runs with the warm-up's lower orders, as it did before."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.runtime.errors import InvalidRequest

VARIANTS = ("bh1", "bh2", "vary_coeff")
SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")


@dataclass(frozen=True)
class UniPCOptions:
    variant: str = "bh1"
    skip_type: str = "time_uniform"
    order: int = 3
    lower_order_final: bool = True

    @classmethod
    def from_options(cls, options: dict) -> UniPCOptions:
        return cls(str(options.get("uni_pc_variant", "bh1")), str(options.get("uni_pc_skip_type", "time_uniform")),
                   int(options.get("uni_pc_order", 3)), bool(options.get("uni_pc_lower_order_final", True)))


def configure(sched, opts: UniPCOptions, steps: int) -> None:
    """Set the scheduler's solver to the options for a pass of `steps` model calls (before set_timesteps)."""
    if opts.variant not in ("bh1", "bh2"):
        raise InvalidRequest("override_settings.uni_pc_variant",
                             f"{opts.variant!r} (A1111's varying-coefficient update) is not implemented here; "
                             "use 'bh1' (A1111's default) or 'bh2'")
    # a pass of fewer steps than the order (A1111 stops: "UniPC order must be < sampling steps", e.g. img2img
    # at a low denoising strength) runs as it did here before the option: only the warm-up's lower orders,
    # which never pass the step count (so the order capped at it changes nothing else)
    order = max(1, min(opts.order, steps))
    sched.register_to_config(solver_type=opts.variant, solver_order=order, lower_order_final=opts.lower_order_final)
    sched.timestep_list = [None] * order  # sized by the order at construction
    sched.model_outputs = [None] * order


def model_times(alphas_cumprod, m0: float, steps: int, skip_type: str) -> np.ndarray:
    """The `steps + 1` model timesteps from `m0` down to 0, spaced by `skip_type` as A1111's UniPC does."""
    if skip_type not in ("time_quadratic", "logSNR"):  # time_uniform: uniform in t is uniform in m
        return np.linspace(m0, 0.0, steps + 1)
    n = len(alphas_cumprod)
    t_T, t_0 = m0 / 1000.0 + 1.0 / n, 1.0 / n  # A1111's continuous time of model timestep m: (m + 1) / N
    if skip_type == "time_quadratic":
        t = np.linspace(np.sqrt(t_T), np.sqrt(t_0), steps + 1) ** 2
    elif skip_type == "logSNR":
        log_alpha = 0.5 * np.log(np.asarray(alphas_cumprod, dtype=np.float64))  # at t = (k + 1) / N
        t_grid = np.arange(1, n + 1, dtype=np.float64) / n

        def lam(t: float) -> float:
            la = np.interp(t, t_grid, log_alpha)
            return float(la - 0.5 * np.log(1.0 - np.exp(2.0 * la)))

        lambdas = np.linspace(lam(t_T), lam(t_0), steps + 1)
        la = -0.5 * np.logaddexp(0.0, -2.0 * lambdas)  # the log alpha of each log-SNR
        t = np.interp(la, log_alpha[::-1], t_grid[::-1])  # log alpha falls with t: interpolate reversed
    return (t - 1.0 / n) * 1000.0
