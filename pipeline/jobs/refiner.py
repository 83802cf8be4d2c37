"""The SDXL refiner: hand sampling over to a second checkpoint part-way through a pass, as A1111 v1.10 does
for `refiner_checkpoint` / `refiner_switch_at`.

Before every model call of a pass the completed ratio is measured and, once it reaches `refiner_switch_at`,
the refiner takes over for the rest of the pass (the switch happens once per pass):
- by noise level (A1111's default since v1.8): the training timestep k whose sigma is nearest to the
  call's, ratio = (999 - k) / 1000 (timestep samplers pass k itself). The switch point is then the same
  for every sampler, schedule and step count: s = 0.8 switches once t <= 199, where the SDXL refiner was
  trained.
- by sampling steps (option `refiner_switch_by_sample_steps`): call index / calls planned, where the plan
  counts both evaluations of a second-order sampler's step.
A null `refiner_switch_at` switches at the first call; a value of 1 or more never switches. A refiner that
is the model already sampling is no switch. Any checkpoint may be the refiner (A1111 does not check); the
latent, sigma schedule and sampler state carry over unchanged, the prompts are encoded again with the
refiner's own text encoders (an SDXL refiner: bigG only, with the aesthetic scores of the options
`sdxl_refiner_high_aesthetic_score` / `sdxl_refiner_low_aesthetic_score`, 6.0 / 2.5), and the pass ends on the
refiner, whose VAE decodes its result.

With hires fix, option `hires_fix_refiner_pass` says where the refiner may switch: "second pass" (default),
"first pass" (pass two then runs on the hires checkpoint or the base again) or "both passes".
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.diffusion.loop import Handover
from pipeline.diffusion.samplers.schedules import NoiseTable
from pipeline.models.sd_model import SDModel
from pipeline.runtime.errors import InvalidRequest

NO_REFINER = (None, "", "None", "none")
HIRES_PASSES = ("first pass", "second pass", "both passes")
DEFAULT_HIRES_PASS = "second pass"
HIGH_AESTHETIC, LOW_AESTHETIC = 6.0, 2.5  # A1111's option defaults
SWAP_STEPS = 8  # what the ETA charges for a model swap, in sampling steps of the pass it happens in

CondAt = Callable[[int], tuple[Any, Any]]


class ModelSource(Protocol):
    def resolve_title(self, name: str, field: str) -> str: ...


class Models(Protocol):
    def get(self, title: str) -> SDModel: ...


@dataclass
class Refiner:
    """A job's refiner: `checkpoint` (the model manager's key), `switch_at`, the mode, where hires allows
    it, and `switched`: the passes in which it took over (for the infotext)."""

    checkpoint: str
    switch_at: float | None
    by_steps: bool
    hires_pass: str
    switched: int = 0

    def enabled_in(self, pass_no: int, enable_hr: bool) -> bool:
        if not enable_hr:
            return pass_no == 1
        return self.hires_pass == "both passes" or self.hires_pass == ("first pass", "second pass")[pass_no - 1]

    def infotext(self, name: str, enable_hr: bool, options: dict[str, Any]) -> list[tuple[str, Any]]:
        """A1111's keys: `Refiner` and `Refiner switch at` once it switched; `Hires refiner` off default."""
        out: list[tuple[str, Any]] = []
        if self.switched:
            out.append(("Refiner", name))
            if self.switch_at is not None:
                out.append(("Refiner switch at", self.switch_at))
            if enable_hr and self.hires_pass != DEFAULT_HIRES_PASS:
                out.append(("Hires refiner", self.hires_pass))
        return out


def resolve(name: str | None, switch_at: float | None, options: dict[str, Any], models: ModelSource
            ) -> Refiner | None:
    """The request's refiner, or None. An unknown name is a 400 naming the checkpoints (before any work)."""
    if name in NO_REFINER:
        return None
    key = models.resolve_title(str(name), "refiner_checkpoint")
    hires_pass = options.get("hires_fix_refiner_pass", DEFAULT_HIRES_PASS)
    if hires_pass not in HIRES_PASSES:
        raise InvalidRequest("override_settings.hires_fix_refiner_pass",
                             f"unknown value {hires_pass!r}", list(HIRES_PASSES))
    return Refiner(key, None if switch_at is None else float(switch_at),
                   bool(options.get("refiner_switch_by_sample_steps", False)), hires_pass)


def aesthetic_scores(options: dict[str, Any]) -> tuple[float, float]:
    """(prompt, negative prompt) aesthetic scores an SDXL refiner is conditioned on."""
    return (float(options.get("sdxl_refiner_high_aesthetic_score", HIGH_AESTHETIC)),
            float(options.get("sdxl_refiner_low_aesthetic_score", LOW_AESTHETIC)))


class PassSwitch:
    """Decides, before each model call of one pass, whether the refiner takes over; passed to the sampling
    loop as `switch(i, t, model)`, it returns a `Handover` to the refiner once, else None.

    conds_for(model) encodes the pass's prompts with a model's text encoders; while should_stop() (an
    interrupt or skip is pending) the refiner is not loaded: the step's callback ends the pass first."""

    def __init__(self, refiner: Refiner, models: Models, plan: Any, conds_for: Callable[[SDModel], CondAt],
                 aesthetic: tuple[float, float], should_stop: Callable[[], bool] | None = None):
        self.refiner = refiner
        self.aesthetic = aesthetic
        self.models = models
        self.conds_for = conds_for
        self.should_stop = should_stop
        self.done = False
        self.timestep_sampler = getattr(plan.sampler, "kind", "") == "timesteps"
        self.calls = len(plan.timesteps)
        self.table = NoiseTable(np.asarray(plan.scheduler.alphas_cumprod, dtype=np.float64))

    def ratio(self, i: int, t: Any) -> float:
        if self.refiner.by_steps:
            return i / max(self.calls, 1)
        t = float(t.flatten()[0]) if torch.is_tensor(t) else float(t)
        last = len(self.table.sigmas) - 1
        if self.timestep_sampler:
            k = int(round(min(max(t, 0.0), last)))
        else:
            sigma = float(self.table.t_to_sigma(min(max(t, 0.0), last)))
            k = int(np.abs(self.table.sigmas - sigma).argmin())
        return (last - k) / (last + 1)

    def __call__(self, i: int, t: Any, current: SDModel) -> Handover | None:
        if self.done or (self.should_stop is not None and self.should_stop()):
            return None
        at = self.refiner.switch_at
        if at is not None and self.ratio(i, t) < at:
            return None
        self.done = True
        if current.extra.get("filename") == self.refiner.checkpoint:
            return None  # the refiner is the model already sampling: nothing to switch
        with torch.inference_mode(False):  # loaded inside the sampling loop: its weights stay normal tensors
            model = self.models.get(self.refiner.checkpoint)
        self.refiner.switched += 1
        return Handover(model, self.conds_for(model), self.aesthetic)



def pass_switch(p: Any, models: Models, state: Any, plan: Any, pass_no: int,
                conds_for: Callable[[SDModel], CondAt]) -> PassSwitch | None:
    """The switch for pass `pass_no` of job `p` (a Processing), or None when no refiner may take over."""
    refiner = getattr(p, "refiner", None)
    if refiner is None or not refiner.enabled_in(pass_no, p.enable_hr):
        return None
    return PassSwitch(refiner, models, plan, conds_for, aesthetic_scores(p.options),
                      lambda: state.interrupted or state.skipped)


def with_swap_cost(p: Any, weights: list[float]) -> list[float]:
    """The ETA's per-pass weights with a refiner's model swap charged to each pass where it may happen."""
    refiner = getattr(p, "refiner", None)
    if refiner is None:
        return weights
    out = list(weights)
    for i, w in enumerate(out):
        pass_no = i % 2 + 1 if p.enable_hr else 1
        if refiner.enabled_in(pass_no, p.enable_hr):
            steps = p.hr_steps if pass_no == 2 else p.steps
            out[i] = w * (1 + SWAP_STEPS / max(steps, 1))
    return out
