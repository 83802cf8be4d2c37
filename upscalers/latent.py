"""The six latent upscale modes of hires fix; they are not pixel upscalers."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UnknownUpscaler
from .naming import match_name


@dataclass(frozen=True)
class LatentMode:
    """One latent upscale mode, as `/sdapi/v1/latent-upscale-modes` lists it."""

    name: str
    """The A1111 name, e.g. `Latent (bicubic antialiased)`."""
    mode: str
    """The `torch.nn.functional.interpolate` mode."""
    antialias: bool
    """The `antialias` argument of `interpolate`."""


LATENT_MODES: tuple[LatentMode, ...] = (
    LatentMode("Latent", "bilinear", False),
    LatentMode("Latent (antialiased)", "bilinear", True),
    LatentMode("Latent (bicubic)", "bicubic", False),
    LatentMode("Latent (bicubic antialiased)", "bicubic", True),
    LatentMode("Latent (nearest)", "nearest", False),
    LatentMode("Latent (nearest-exact)", "nearest-exact", False),
)
"""In A1111's order."""

DEFAULT_LATENT_MODE = "Latent"
"""What `hr_upscaler: null` means."""


def latent_mode_names() -> list[str]:
    """The six names, in A1111's order."""
    return [m.name for m in LATENT_MODES]


def is_latent(name: str | None) -> bool:
    """Whether `name` names a latent mode (exactly, or loosely and unambiguously)."""
    if name is None:
        return False
    try:
        resolve_latent(name)
    except UnknownUpscaler:
        return False
    return True


def resolve_latent(name: str | None) -> LatentMode:
    """The latent mode called `name` (None means `Latent`); UnknownUpscaler otherwise."""
    if name is None:
        name = DEFAULT_LATENT_MODE
    by_name = {m.name: m for m in LATENT_MODES}
    return by_name[match_name(name, list(by_name))]


def interpolate_args(name: str | None) -> tuple[str, bool]:
    """`(mode, antialias)` for `torch.nn.functional.interpolate` of the latent mode `name`."""
    m = resolve_latent(name)
    return m.mode, m.antialias
