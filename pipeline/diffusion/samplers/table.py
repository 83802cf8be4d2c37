"""The sampler table (`/sdapi/v1/samplers`) and how request names resolve to a sampler and schedule."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from diffusers import LMSDiscreteScheduler, UniPCMultistepScheduler

from pipeline.runtime.errors import InvalidRequest, UnknownName

from .ancestral import A1111KDPM2AncestralScheduler, EtaDPMSolverSDEScheduler, EtaEulerAncestralScheduler
from .brownian import BrownianDPMSolverMultistepScheduler
from .churn import ChurnEulerScheduler, ChurnHeunScheduler, ChurnKDPM2Scheduler
from .dpmfast import DPMFastScheduler
from .dpmpp2s import DPMPP2SAncestralScheduler
from .lcm import A1111LCMScheduler
from .restart import RestartScheduler
from .schedules import AUTOMATIC, SCHEDULES, SCHEDULES_BY_NAME, ScheduleSpec
from .timesteps import A1111DDIMCFGppScheduler, A1111DDIMScheduler, A1111PLMSScheduler

# How a sampler's noise levels are laid out in its diffusers scheduler (see plan.py).
Layout = Literal["plain", "heun", "kdpm2", "kdpm2_ancestral", "dpmsolver_sde", "multistep", "ddim", "plms", "unipc",
                 "lcm", "call_list"]

K_SCHEDULES = tuple(s.name for s in SCHEDULES)
ONLY_AUTOMATIC = ("automatic",)


@dataclass(frozen=True)
class SamplerSpec:
    """One entry of `/sdapi/v1/samplers`, with what it takes to run it on diffusers.

    name/aliases/options: exactly as A1111 v1.10 lists them (options as a str->str map).
    scheduler_class/config_overrides: the diffusers scheduler and the config keys forced on it.
    default_schedule: the schedule `Automatic` means for this sampler (None: the model's own).
    kind: "k" for k-diffusion samplers driven by a sigma schedule, "timesteps" for A1111's
    DDIM/PLMS/UniPC, which ignore the schedule type. schedules: the schedule names accepted.
    stochastic: draws fresh noise while sampling (ancestral or SDE); brownian: that noise comes
    from a per-seed Brownian tree as in A1111. params: the sampler parameters that change results
    (eta for ancestral/SDE/DDIM, s_churn/s_tmin/s_tmax/s_noise for Euler, Heun and DPM2, s_noise wherever
    A1111 passes it; those three are not `stochastic`: they draw noise only with s_churn > 0); eta_default:
    A1111's default eta when the request has none (its options `eta_ancestral` 1.0 and `eta_ddim` 0.0).
    """

    name: str
    aliases: tuple[str, ...]
    options: Mapping[str, str]
    scheduler_class: type
    config_overrides: Mapping[str, Any]
    layout: Layout
    kind: Literal["k", "timesteps"] = "k"
    default_schedule: str | None = None
    discard_next_to_last_sigma: bool = False
    second_order: bool = False
    stochastic: bool = False
    brownian: bool = False
    params: frozenset[str] = field(default_factory=frozenset)
    eta_default: float | None = None
    schedules: tuple[str, ...] = K_SCHEDULES


def _options(**kw: Any) -> Mapping[str, str]:
    return MappingProxyType({k: str(v) for k, v in kw.items()})


_NO_SIGMA_FLAGS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}


def _multistep(**kw: Any) -> Mapping[str, Any]:
    return MappingProxyType({
        **_NO_SIGMA_FLAGS, "thresholding": False, "lower_order_final": False, "euler_at_final": False,
        "use_lu_lambdas": False, "final_sigmas_type": "zero", "variance_type": None, **kw,
    })


_ETA = frozenset({"eta"})
_ETA_NOISE = frozenset({"eta", "s_noise"})  # A1111 v1.10 passes s_noise to DPM2 a and the DPM++ SDE samplers
_CHURN = frozenset({"s_churn", "s_tmin", "s_tmax", "s_noise"})  # A1111 v1.10's extra params of Euler, Heun, DPM2

SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec(
        "DPM++ 2M", ("k_dpmpp_2m",), _options(scheduler="karras"), BrownianDPMSolverMultistepScheduler,
        _multistep(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint"), "multistep",
        default_schedule="karras",
    ),
    SamplerSpec(
        "DPM++ SDE", ("k_dpmpp_sde",), _options(scheduler="karras", second_order=True, brownian_noise=True),
        EtaDPMSolverSDEScheduler, MappingProxyType(dict(_NO_SIGMA_FLAGS)), "dpmsolver_sde",
        default_schedule="karras", second_order=True, stochastic=True, brownian=True, params=_ETA_NOISE,
        eta_default=1.0,
    ),
    SamplerSpec(
        "DPM++ 2M SDE", ("k_dpmpp_2m_sde",), _options(scheduler="exponential", brownian_noise=True),
        BrownianDPMSolverMultistepScheduler,
        _multistep(algorithm_type="sde-dpmsolver++", solver_order=2, solver_type="midpoint"), "multistep",
        default_schedule="exponential", stochastic=True, brownian=True, params=_ETA_NOISE, eta_default=1.0,
    ),
    SamplerSpec(
        "DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",),
        _options(scheduler="exponential", brownian_noise=True, solver_type="heun"),
        BrownianDPMSolverMultistepScheduler,
        _multistep(algorithm_type="sde-dpmsolver++", solver_order=2, solver_type="heun"), "multistep",
        default_schedule="exponential", stochastic=True, brownian=True, params=_ETA_NOISE, eta_default=1.0,
    ),
    SamplerSpec(
        "DPM++ 2S a", ("k_dpmpp_2s_a",), _options(scheduler="karras", uses_ensd=True, second_order=True),
        DPMPP2SAncestralScheduler, MappingProxyType(dict(_NO_SIGMA_FLAGS)), "call_list",
        default_schedule="karras", second_order=True, stochastic=True, params=_ETA_NOISE, eta_default=1.0,
    ),
    SamplerSpec(
        "DPM++ 3M SDE", ("k_dpmpp_3m_sde",),
        _options(scheduler="exponential", discard_next_to_last_sigma=True, brownian_noise=True),
        BrownianDPMSolverMultistepScheduler,
        # k-diffusion's 3M SDE takes its second step with the "heun" 2nd-order coefficient
        _multistep(algorithm_type="sde-dpmsolver++", solver_order=3, solver_type="heun"), "multistep",
        default_schedule="exponential", discard_next_to_last_sigma=True, stochastic=True, brownian=True,
        params=_ETA_NOISE, eta_default=1.0,
    ),
    SamplerSpec(
        "Euler a", ("k_euler_a", "k_euler_ancestral"), _options(uses_ensd=True), EtaEulerAncestralScheduler,
        MappingProxyType({}), "plain", stochastic=True, params=_ETA, eta_default=1.0,
    ),
    SamplerSpec(
        "Euler", ("k_euler",), _options(), ChurnEulerScheduler, MappingProxyType(dict(_NO_SIGMA_FLAGS)), "plain",
        params=_CHURN,
    ),
    SamplerSpec(
        "LMS", ("k_lms",), _options(), LMSDiscreteScheduler, MappingProxyType(dict(_NO_SIGMA_FLAGS)), "plain",
    ),
    SamplerSpec(
        "Heun", ("k_heun",), _options(second_order=True), ChurnHeunScheduler,
        MappingProxyType({**_NO_SIGMA_FLAGS, "clip_sample": False}), "heun", second_order=True,
        params=_CHURN,
    ),
    SamplerSpec(
        "DPM2", ("k_dpm_2",), _options(scheduler="karras", discard_next_to_last_sigma=True, second_order=True),
        ChurnKDPM2Scheduler, MappingProxyType(dict(_NO_SIGMA_FLAGS)), "kdpm2",
        default_schedule="karras", discard_next_to_last_sigma=True, second_order=True,
        params=_CHURN,
    ),
    SamplerSpec(
        "DPM2 a", ("k_dpm_2_a",),
        _options(scheduler="karras", discard_next_to_last_sigma=True, uses_ensd=True, second_order=True),
        A1111KDPM2AncestralScheduler, MappingProxyType(dict(_NO_SIGMA_FLAGS)), "kdpm2_ancestral",
        default_schedule="karras", discard_next_to_last_sigma=True, second_order=True, stochastic=True,
        params=_ETA_NOISE, eta_default=1.0,
    ),
    SamplerSpec(
        # the schedule type does not shape its steps (dpmfast.py), as in A1111
        "DPM fast", ("k_dpm_fast",), _options(uses_ensd=True), DPMFastScheduler,
        MappingProxyType(dict(_NO_SIGMA_FLAGS)), "call_list", stochastic=True, params=_ETA_NOISE, eta_default=1.0,
    ),
    SamplerSpec(
        # A1111 passes Restart no sampler parameters (its function is not in sampler_extra_params)
        "Restart", ("restart",), _options(scheduler="karras", second_order=True), RestartScheduler,
        MappingProxyType(dict(_NO_SIGMA_FLAGS)), "call_list", default_schedule="karras", second_order=True,
        stochastic=True,
    ),
    SamplerSpec(
        "DDIM", ("ddim",), _options(), A1111DDIMScheduler,
        MappingProxyType({"clip_sample": False, "thresholding": False, "set_alpha_to_one": False}), "ddim",
        kind="timesteps", params=_ETA, eta_default=0.0, schedules=ONLY_AUTOMATIC,
    ),
    SamplerSpec(
        "DDIM CFG++", ("ddim_cfgpp",), _options(), A1111DDIMCFGppScheduler,
        MappingProxyType({"clip_sample": False, "thresholding": False, "set_alpha_to_one": False}), "ddim",
        kind="timesteps", params=_ETA, eta_default=0.0, schedules=ONLY_AUTOMATIC,
    ),
    SamplerSpec(
        "PLMS", ("plms",), _options(), A1111PLMSScheduler,
        MappingProxyType({"skip_prk_steps": True, "set_alpha_to_one": False}), "plms", kind="timesteps",
        schedules=ONLY_AUTOMATIC,
    ),
    SamplerSpec(
        "UniPC", ("unipc",), _options(), UniPCMultistepScheduler,
        MappingProxyType({
            **_NO_SIGMA_FLAGS, "solver_order": 3, "solver_type": "bh1", "predict_x0": True, "thresholding": False,
            "lower_order_final": True, "disable_corrector": [], "use_flow_sigmas": False,
            "final_sigmas_type": "sigma_min",
        }),
        "unipc", kind="timesteps", schedules=ONLY_AUTOMATIC,
    ),
    SamplerSpec(
        # A1111 fixes LCM's 50 original steps and its boundary condition's timestep scaling of 10
        "LCM", ("k_lcm",), _options(), A1111LCMScheduler,
        MappingProxyType({"original_inference_steps": 50, "timestep_scaling": 10.0}), "lcm", stochastic=True,
    ),
)

SAMPLERS_BY_NAME: dict[str, SamplerSpec] = {s.name: s for s in SAMPLERS}
DEFAULT_SAMPLER = "Euler"  # the API's effective default (sampler_index defaults to "Euler")
SAME_SAMPLER = "Use same sampler"
SAME_SCHEDULER = "Use same scheduler"


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def schedule_names() -> list[str]:
    return [s.label for s in SCHEDULES]


def _find_sampler(name: str) -> SamplerSpec | None:
    if name in SAMPLERS_BY_NAME:
        return SAMPLERS_BY_NAME[name]
    for spec in SAMPLERS:
        if name in spec.aliases:
            return spec
    folded = name.casefold()
    for spec in SAMPLERS:
        if folded == spec.name.casefold() or any(folded == a.casefold() for a in spec.aliases):
            return spec
    return None


def _find_schedule(name: str, *, aliases: bool) -> ScheduleSpec | None:
    for spec in SCHEDULES:
        if name in (spec.name, spec.label) or (aliases and name in spec.aliases):
            return spec
    folded = name.casefold()
    for spec in SCHEDULES:
        keys = (spec.name, spec.label) + (spec.aliases if aliases else ())
        if any(folded == k.casefold() for k in keys):
            return spec
    return None


def _split_legacy(name: str) -> tuple[str, ScheduleSpec | None]:
    """'DPM++ 2M Karras' -> ('DPM++ 2M', karras): a trailing ' <schedule name|label|alias>' is split off."""
    if _find_sampler(name) is not None:
        return name, None
    for spec in SCHEDULES:
        for key in (spec.label, spec.name, *spec.aliases):
            if len(name) > len(key) + 1 and name[-len(key) - 1:].casefold() == " " + key.casefold():
                return name[: -len(key) - 1].rstrip(), spec
    return name, None


def check_supported(sampler: SamplerSpec, schedule: ScheduleSpec, field: str = "scheduler") -> None:
    """Raise InvalidRequest naming the supported schedule types when this pair cannot run."""
    if schedule.name not in sampler.schedules:
        valid = [SCHEDULES_BY_NAME[n].label for n in sampler.schedules]
        raise InvalidRequest(
            field,
            f"sampler {sampler.name!r} does not support schedule type {schedule.label!r}"
            f" (A1111's {sampler.name} ignores the schedule type; only its own timesteps are served)"
            if sampler.kind == "timesteps" else
            f"sampler {sampler.name!r} does not support schedule type {schedule.label!r}",
            valid,
        )


def resolve_schedule(scheduler: str | None, field: str = "scheduler") -> ScheduleSpec:
    """A request's `scheduler`: a name or a label (`karras`, `Karras`), any case; None/'' -> Automatic."""
    if scheduler is None or (isinstance(scheduler, str) and scheduler.strip() == ""):
        return AUTOMATIC
    if not isinstance(scheduler, str):
        raise UnknownName(field, scheduler, schedule_names())
    spec = _find_schedule(scheduler.strip(), aliases=True)
    if spec is None:
        raise UnknownName(field, scheduler, schedule_names())
    return spec


def resolve(
    sampler_name: str | None, sampler_index: str | None = None, scheduler: str | None = None,
    *, field: str = "sampler_name",
) -> tuple[SamplerSpec, ScheduleSpec]:
    """Resolve a request's sampler and schedule type (A1111 §8.3, but refusing unknown names).

    The sampler is `sampler_name`, else `sampler_index`, else "Euler". A legacy combined name
    ("DPM++ 2M Karras", "Euler a karras", "DPM++ 2M SDE Exponential") is split into sampler and
    schedule; the split schedule applies only when `scheduler` is empty. Aliases (`k_euler_a`) and
    any letter case are accepted. Raises UnknownName (listing the valid names) or InvalidRequest
    (an unsupported sampler/schedule pair, listing the supported schedule types).
    """
    raw = sampler_name if sampler_name not in (None, "") else sampler_index
    if raw in (None, ""):
        raw = DEFAULT_SAMPLER
    if raw is sampler_index and sampler_name in (None, ""):
        field = "sampler_index"
    if not isinstance(raw, str):
        raise UnknownName(field, raw, sampler_names())
    base, split = _split_legacy(raw.strip())
    spec = _find_sampler(base)
    if spec is None:
        raise UnknownName(field, raw, sampler_names())
    requested = resolve_schedule(scheduler)
    schedule = requested if requested is not AUTOMATIC or split is None else split
    if schedule.name != "automatic" and schedule.name == spec.default_schedule:
        schedule = AUTOMATIC  # A1111 reports a sampler's own default as Automatic
    check_supported(spec, schedule, "scheduler" if requested is not AUTOMATIC or split is None else field)
    return spec, schedule


def resolve_hires(
    hr_sampler_name: str | None, hr_scheduler: str | None, first_pass: tuple[SamplerSpec, ScheduleSpec],
) -> tuple[SamplerSpec, ScheduleSpec]:
    """The second pass's sampler and schedule: empty or "Use same ..." keeps the first pass's choice."""
    first_sampler, first_schedule = first_pass
    same_sampler = hr_sampler_name is None or (isinstance(hr_sampler_name, str)
                                               and hr_sampler_name.strip() in ("", SAME_SAMPLER))
    same_schedule = hr_scheduler is None or (isinstance(hr_scheduler, str)
                                             and hr_scheduler.strip() in ("", SAME_SCHEDULER))
    if same_sampler:
        sampler, split = first_sampler, None
    else:
        base, split = _split_legacy(hr_sampler_name.strip()) if isinstance(hr_sampler_name, str) else ("", None)
        sampler = _find_sampler(base)
        if sampler is None:
            raise UnknownName("hr_sampler_name", hr_sampler_name, sampler_names())
    if not same_schedule:
        schedule = resolve_schedule(hr_scheduler, "hr_scheduler")
        field = "hr_scheduler"
    elif split is not None:
        schedule, field = split, "hr_sampler_name"
    else:
        schedule, field = first_schedule, "hr_scheduler"
    if schedule.name != "automatic" and schedule.name == sampler.default_schedule:
        schedule = AUTOMATIC
    check_supported(sampler, schedule, field)
    return sampler, schedule


def effective_schedule(sampler: SamplerSpec, schedule: ScheduleSpec) -> ScheduleSpec:
    """What actually runs: Automatic becomes the sampler's default schedule, else stays Automatic."""
    if schedule is AUTOMATIC and sampler.default_schedule is not None:
        return SCHEDULES_BY_NAME[sampler.default_schedule]
    return schedule


def label_for_infotext(sampler: SamplerSpec, schedule: ScheduleSpec) -> str:
    """A1111's `Schedule type` value: Automatic shows the sampler's default label (Karras for DPM++ 2M)."""
    return effective_schedule(sampler, schedule).label


def api_samplers() -> list[dict]:
    """`/sdapi/v1/samplers`: [{name, aliases, options}] in A1111's order, only what this server runs."""
    return [{"name": s.name, "aliases": list(s.aliases), "options": dict(s.options)} for s in SAMPLERS]


def api_schedulers() -> list[dict]:
    """`/sdapi/v1/schedulers`: [{name, label, aliases, default_rho, need_inner_model}] as A1111 lists them."""
    return [
        {
            "name": s.name, "label": s.label, "aliases": list(s.aliases) if s.aliases else None,
            "default_rho": s.default_rho, "need_inner_model": s.need_inner_model,
        }
        for s in SCHEDULES
    ]
