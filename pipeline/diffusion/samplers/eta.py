"""A1111's eta of a pass: the request's, else the option of the sampler's kind, and its infotext entry."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .table import SamplerSpec


def option_eta(eta: float | None, sampler: SamplerSpec, options: Mapping[str, Any]) -> float | None:
    """A1111's eta of a pass: the request's, else the option of the sampler's kind (`eta_ddim` for the
    timestep samplers DDIM, DDIM CFG++, PLMS, UniPC; `eta_ancestral` for the k-diffusion ones); None when
    neither is set (the sampler's default)."""
    if eta is not None:
        return eta
    value = options.get("eta_ddim" if sampler.kind == "timesteps" else "eta_ancestral")
    return None if value is None else float(value)


def eta_infotext(eta: float | None, sampler: SamplerSpec) -> tuple[str, float] | None:
    """A1111's infotext entry for a pass's resolved eta: `Eta DDIM` (timestep samplers) or `Eta`, written
    only when the sampler takes eta and it differs from the sampler's default."""
    default = sampler.eta_default
    if eta is None or "eta" not in sampler.params or eta == default:
        return None
    return ("Eta DDIM" if sampler.kind == "timesteps" else "Eta"), eta
