"""Forge's integrated always-on scripts and the common extension titles that UI-exported payloads carry.

Forge's UI exports every always-on script with its arguments, most of them disabled. Each title below is
recognised (case-insensitive, also without Forge's "(SD 1.x, SD 2.x, SDXL)" suffix and under the older titles
Forge used), its args read in Forge's order (`extensions-builtin/sd_forge_*/scripts`; missing trailing args
take Forge's defaults, as the older versions sent fewer). A disabled entry changes nothing. An enabled one is
honoured:
- FreeU, Self-Attention Guidance, Perturbed-Attention Guidance and Dynamic Thresholding act in every
  sampling pass (pipeline/diffusion/guidance.py, pipeline/models/unet_patches.py), writing Forge's infotext
  keys (`freeu_*`, `sag_*`, `pagi_*`, `dynthres_*`);
- MultiDiffusion Integrated is our tiled diffusion (pipeline/diffusion/tiled), its pixel sizes in latent cells;
- HyperTile Integrated is the Hypertile UNet patch (pipeline/models/patches/hypertile.py) in every pass;
- Never OOM Integrated is our memory fallbacks: the VAE always in tiles, the UNet's automatic tiling on;
- API payload and OpenOutpaint only display or drive the UI: they never change an image;
or it is a 400 naming the title and saying it is not supported (never a silent no-op).

Titles owned elsewhere (Refiner, Sampler, Seed, Soft Inpainting, Extra options, Comments, ControlNet,
Hypertile, Tiled Diffusion; Kohya HRFix Integrated: jobs/speed.py) are not registered here."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.runtime.errors import InvalidRequest

SUFFIX = " (SD 1.x, SD 2.x, SDXL)"
CURVES = ("Constant", "Linear Down", "Cosine Down", "Half Cosine Down", "Linear Up", "Cosine Up", "Half Cosine Up",
          "Power Up", "Power Down", "Linear Repeating", "Cosine Repeating", "Sawtooth")


@dataclass(frozen=True)
class Arg:
    """One positional argument: its name, Forge's default, and what it may be: "bool", "float" or "int"
    (with an inclusive range, None for open), or a tuple of choices."""

    name: str
    default: Any
    kind: Any = "float"
    low: float | None = None
    high: float | None = None
    label: str = ""


@dataclass(frozen=True)
class ForgeScript:
    """A recognised title: its args in Forge's order, which arg(s) switch it on, and `supported` False for a
    script hiresd does not implement (enabled: a 400). `any_args`: a UI-only script whose args are never read."""

    title: str
    args: tuple[Arg, ...] = ()
    aliases: tuple[str, ...] = ()
    switches: tuple[int, ...] = (0,)
    supported: bool = True
    any_args: bool = False
    why: str = ""

    @property
    def key(self) -> str:
        return self.title.lower()


def _a(name: str, default: Any, kind: Any = "float", low: float | None = None, high: float | None = None,
       label: str = "") -> Arg:
    return Arg(name, default, kind, low, high, label or name.replace("_", " ").capitalize())


ENABLED = _a("enabled", False, "bool", label="Enabled")
FREEU = ForgeScript("FreeU Integrated" + SUFFIX, (
    ENABLED, _a("b1", 1.01, label="B1"), _a("b2", 1.02, label="B2"), _a("s1", 0.99, label="S1"),
    _a("s2", 0.95, label="S2"), _a("start", 0.0, "float", 0.0, 1.0, "Start step"),
    _a("end", 1.0, "float", 0.0, 1.0, "End step")), aliases=("FreeU Integrated",))
SAG = ForgeScript("SelfAttentionGuidance Integrated" + SUFFIX, (
    ENABLED, _a("scale", 0.5, label="Scale"), _a("blur_sigma", 2.0, "float", 0.0, None, "Blur Sigma"),
    _a("threshold", 1.0, label="Blur mask threshold")), aliases=("SelfAttentionGuidance Integrated",))
PAG = ForgeScript("PerturbedAttentionGuidance Integrated", (
    ENABLED, _a("scale", 3.0, label="Scale"), _a("attenuation", 0.0, label="Attenuation (linear, % of scale)"),
    _a("start_step", 0.0, "float", 0.0, 1.0, "Start step"), _a("end_step", 1.0, "float", 0.0, 1.0, "End step")),
    aliases=("Perturbed Attention Guidance Integrated",))
DYNTHRES = ForgeScript("DynamicThresholding (CFG-Fix) Integrated", (
    ENABLED, _a("mimic_scale", 7.0, label="Mimic Scale"),
    _a("threshold_percentile", 1.0, "float", 0.0, 1.0, "Threshold Percentile"),
    _a("mimic_mode", "Constant", CURVES, label="Mimic Mode"), _a("mimic_scale_min", 0.0, label="Mimic Scale Min"),
    _a("cfg_mode", "Constant", CURVES, label="Cfg Mode"), _a("cfg_scale_min", 0.0, label="Cfg Scale Min"),
    _a("sched_val", 1.0, label="Sched Val"),
    _a("separate_feature_channels", "enable", ("enable", "disable"), label="Separate Feature Channels"),
    _a("scaling_startpoint", "MEAN", ("MEAN", "ZERO"), label="Scaling Startpoint"),
    _a("variability_measure", "AD", ("AD", "STD"), label="Variability Measure"),
    _a("interpolate_phi", 1.0, "float", 0.0, 1.0, "Interpolate Phi")))
MULTIDIFFUSION = ForgeScript("MultiDiffusion Integrated", (
    ENABLED, _a("method", "MultiDiffusion", ("MultiDiffusion", "Mixture of Diffusers"), label="Method"),
    _a("tile_width", 768, "int", 64, 8192, "Tile Width"), _a("tile_height", 768, "int", 64, 8192, "Tile Height"),
    _a("tile_overlap", 64, "int", 0, 2048, "Tile Overlap"),
    _a("tile_batch_size", 4, "int", 1, 64, "Tile Batch Size")))
NEVER_OOM = ForgeScript("Never OOM Integrated", (
    _a("unet_enabled", False, "bool", label="Enabled for UNet (always maximize offload)"),
    _a("vae_enabled", False, "bool", label="Enabled for VAE (always tiled)")), switches=(0, 1))
HYPERTILE = ForgeScript("HyperTile Integrated", (
    ENABLED, _a("tile_size", 256, "int", 1, 2048, "Tile Size"), _a("swap_size", 2, "int", 1, 128, "Swap Size"),
    _a("max_depth", 0, "int", 0, 10, "Max Depth"), _a("scale_depth", False, "bool", label="Scale Depth")))
LATENT_MODIFIER = ForgeScript("LatentModifier Integrated", (ENABLED,), supported=False, any_args=True)
STYLE_ALIGN = ForgeScript("StyleAlign Integrated", (_a("shared_attention", False, "bool", label="Share attention in batch"),
                                                    _a("strength", 1.0, label="Strength")), supported=False)
ADETAILER = ForgeScript("ADetailer", (_a("ad_enable", False, "bool", label="Enable ADetailer"),), supported=False,
                        any_args=True, why="face/object detection and re-inpainting (ADetailer) is not available")
API_PAYLOAD = ForgeScript("API payload", switches=(), any_args=True)
OPEN_OUTPAINT = ForgeScript("OpenOutpaint", switches=(), any_args=True)

SCRIPTS = (FREEU, SAG, PAG, DYNTHRES, MULTIDIFFUSION, NEVER_OOM, HYPERTILE, LATENT_MODIFIER, STYLE_ALIGN,
           ADETAILER, API_PAYLOAD, OPEN_OUTPAINT)


def _where(script: ForgeScript, i: int) -> str:
    name = script.args[i].name if i < len(script.args) else "?"
    return f"alwayson_scripts.{script.title}.args[{i}] ({name})"


def _value(script: ForgeScript, i: int, value: Any) -> Any:
    spec = script.args[i]
    if spec.kind == "bool":
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        raise InvalidRequest(_where(script, i), f"expected true or false, got {value!r}")
    if isinstance(spec.kind, tuple):
        if value not in spec.kind:
            raise InvalidRequest(_where(script, i), f"unknown value {value!r}", list(spec.kind))
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(_where(script, i), f"expected a number, got {value!r}")
    if spec.kind == "int":
        if int(value) != value:
            raise InvalidRequest(_where(script, i), f"expected a whole number, got {value!r}")
        value = int(value)
    else:
        value = float(value)
    if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
        low = "-inf" if spec.low is None else spec.low
        high = "inf" if spec.high is None else spec.high
        raise InvalidRequest(_where(script, i), f"must be from {low} to {high}, got {value}")
    return value


def parse(script: ForgeScript, raw: list[Any]) -> dict[str, Any] | None:
    """The args by name with Forge's defaults for missing trailing ones; None when the entry is disabled.
    Raises InvalidRequest (a 400) for a bad arg, too many args, or an enabled script hiresd lacks."""
    if script.any_args:
        on = bool(raw) and any(i < len(raw) and _switched(script, i, raw[i]) for i in script.switches)
        if on:
            raise _unsupported(script)
        return None
    if len(raw) > len(script.args):
        raise InvalidRequest(f"alwayson_scripts.{script.title}.args", f"{len(raw)} args; Forge's script takes at "
                             f"most {len(script.args)} ({', '.join(a.name for a in script.args)})")
    values = [_value(script, i, v) for i, v in enumerate(raw)] + [a.default for a in script.args[len(raw):]]
    if not any(values[i] for i in script.switches):
        return None
    if not script.supported:
        raise _unsupported(script)
    return {a.name: v for a, v in zip(script.args, values)}


def _switched(script: ForgeScript, i: int, value: Any) -> bool:
    if i == 0 and isinstance(value, dict):  # ADetailer's older API form: the first arg is a unit, so enabled
        return True
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise InvalidRequest(_where(script, i), f"expected true or false, got {value!r}")


def _unsupported(script: ForgeScript) -> InvalidRequest:
    why = f" ({script.why})" if script.why else ""
    return InvalidRequest(f"alwayson_scripts.{script.title}", f"'{script.title}' is not supported by hiresd{why}; "
                          "send it disabled or leave it out")


def settings(p: Any, script: ForgeScript) -> dict[str, Any] | None:
    """The job's parsed args of `script` (None: not sent, or disabled). The args were checked when the
    request came in (`register`'s check)."""
    raw = (getattr(p, "script_args", None) or {}).get(script.key)
    return None if raw is None else parse(script, raw)


def request_settings(req: Any, script: ForgeScript) -> dict[str, Any] | None:
    """The same from a request's `alwayson_scripts` (before the job exists), matching titles as A1111 does."""
    titles = {script.key, *(a.lower() for a in script.aliases)}
    for name, entry in (getattr(req, "alwayson_scripts", None) or {}).items():
        if str(name).lower() in titles:
            args = entry.get("args", []) if isinstance(entry, dict) else []
            return parse(script, list(args) if isinstance(args, list) else [])
    return None


def multidiffusion_tiles(req: Any) -> Any:
    """MultiDiffusion Integrated's settings as our TileSettings (None: not sent or disabled): Forge's pixel
    sizes in latent cells (/8), as its port does; the overlap must stay below the tile."""
    from pipeline.diffusion.tiled import TileSettings

    s = request_settings(req, MULTIDIFFUSION)
    if s is None:
        return None
    tile_w, tile_h, overlap = s["tile_width"] // 8, s["tile_height"] // 8, s["tile_overlap"] // 8
    if overlap >= min(tile_w, tile_h):
        raise InvalidRequest(_where(MULTIDIFFUSION, 4), f"overlap {s['tile_overlap']} px must be smaller than the "
                             f"tile ({s['tile_width']}x{s['tile_height']} px)")
    return TileSettings(s["method"], tile_w, tile_h, overlap, s["tile_batch_size"])


def infotext(p: Any, prefix: str, values: dict[str, Any], names: dict[str, str] | None = None) -> None:
    """Forge's infotext keys for an applied script: `<prefix>_<arg>` for each arg (`names` renames some)."""
    names = names or {}
    p.extra_generation_params.update({f"{prefix}_{names.get(k, k)}": v for k, v in values.items()})


def _info_args(script: ForgeScript) -> Callable[[bool], list[dict[str, Any]]]:
    def info(img2img: bool) -> list[dict[str, Any]]:
        out = []
        for a in script.args:
            entry: dict[str, Any] = {"label": a.label, "value": a.default}
            if isinstance(a.kind, tuple):
                entry["choices"] = list(a.kind)
            elif a.kind != "bool" and a.low is not None and a.high is not None:
                entry["minimum"], entry["maximum"] = a.low, a.high
            out.append(entry)
        return out
    return info


def register(extensions: Any) -> None:
    """List every title among the always-on scripts with its aliases and the check of its args. A loaded
    extension of the same name keeps the name."""
    from pipeline.jobs.extensions import Extension

    for script in SCRIPTS:
        if script.key in extensions.names():
            continue
        extensions.register(Extension(script.title, "built-in (pipeline/jobs/forge_scripts.py)", {},
                                      _info_args(script), script.aliases, lambda raw, s=script: parse(s, raw),
                                      listed=script.supported))
