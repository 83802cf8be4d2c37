"""The hires speed options as a job reads them: Hypertile (A1111's `hypertile_*` options), token merging
(`token_merging_ratio`, `_hr`, `_img2img`) and Kohya Deep Shrink (Forge's "Kohya HRFix Integrated"
always-on entry), each a provider of jobs/unet_patches.PROVIDERS that also writes A1111's / Forge's
infotext keys; and the always-on titles `Hypertile` and `Kohya HRFix Integrated` in the extensions
registry. All are off by default."""
from __future__ import annotations

import contextlib
from typing import Any

from pipeline.models.patches import PassInfo
from pipeline.models.patches.deep_shrink import METHODS, DeepShrink
from pipeline.models.patches.hypertile import Hypertile, vae_hypertile
from pipeline.models.patches.tome import TokenMerging
from pipeline.runtime.errors import InvalidRequest

HYPERTILE = "Hypertile"
KOHYA = "Kohya HRFix Integrated"
HYPERTILE_DEFAULTS = {"hypertile_max_depth_unet": 3, "hypertile_max_tile_unet": 256, "hypertile_swap_size_unet": 3,
                      "hypertile_max_depth_vae": 3, "hypertile_max_tile_vae": 128, "hypertile_swap_size_vae": 3}
KOHYA_ARGS = ("enabled", "block_number", "downscale_factor", "start_percent", "end_percent",
              "downscale_after_skip", "downscale_method", "upscale_method")
KOHYA_DEFAULTS = (False, 3, 2.0, 0.0, 0.35, True, "bicubic", "bicubic")
KOHYA_LABELS = ("Enabled", "Block Number", "Downscale Factor", "Start Percent", "End Percent",
                "Downscale After Skip", "Downscale Method", "Upscale Method")
_KOHYA_RANGES = {1: (1, 32), 2: (0.1, 9.0), 3: (0.0, 1.0), 4: (0.0, 1.0)}


# --- Hypertile -------------------------------------------------------------------------------------------

def _hypertile_params(p: Any, part: str = "unet") -> None:
    """A1111's infotext of the U-Net (VAE) settings: each written only when it is not the option's default."""
    name = "U-Net" if part == "unet" else "VAE"
    for what, label in (("max_depth", "max depth"), ("max_tile", "max tile size"), ("swap_size", "swap size")):
        key = f"hypertile_{what}_{part}"
        value = int(p.options.get(key, HYPERTILE_DEFAULTS[key]))
        if value != HYPERTILE_DEFAULTS[key]:
            p.extra_generation_params[f"Hypertile {name} {label}"] = value


def hypertile_for_pass(p: Any, info: PassInfo) -> Hypertile | None:
    """A1111's script: pass one (and img2img) when `hypertile_enable_unet`; the hires pass when that or
    `hypertile_enable_unet_secondpass`; each pass draws its tile counts from the job's first seed."""
    every = bool(p.options.get("hypertile_enable_unet", False))
    second = bool(p.options.get("hypertile_enable_unet_secondpass", False))
    enabled = every or (second and info.pass_no == 2)
    if every and "Hypertile U-Net" not in p.extra_generation_params:  # the first pass the job runs
        p.extra_generation_params["Hypertile U-Net"] = True
        _hypertile_params(p)
    elif enabled and not every:
        p.extra_generation_params["Hypertile U-Net second pass"] = True
        _hypertile_params(p)
    if p.options.get("hypertile_enable_vae", False) and "Hypertile VAE" not in p.extra_generation_params:
        p.extra_generation_params["Hypertile VAE"] = True
        _hypertile_params(p, "vae")
    if not enabled:
        return None
    width, height = info.width, info.height
    hires = getattr(p, "hires", None)
    if info.pass_no == 2 and hires is not None:  # A1111 sizes the tiles from hr_upscale_to_x/y
        width, height = hires.upscale_w, hires.upscale_h
    return Hypertile(width, height, int(p.options.get("hypertile_max_depth_unet", 3)),
                     int(p.options.get("hypertile_max_tile_unet", 256)),
                     int(p.options.get("hypertile_swap_size_unet", 3)))


def vae_hypertile_for(p: Any, vae: Any, width: int, height: int) -> Any:
    """The decode of a `width` x `height` picture of job `p` by `vae`: its mid-block attention tiled when
    `hypertile_enable_vae` (a context manager yielding the tile counts; a no-op when off)."""
    if not p.options.get("hypertile_enable_vae", False):
        return contextlib.nullcontext([])
    seeds = getattr(p, "all_seeds", None) or [getattr(p, "seed", 0)]
    return vae_hypertile(vae, width, height, int(seeds[0]), int(p.options.get("hypertile_max_tile_vae", 128)),
                         int(p.options.get("hypertile_swap_size_vae", 3)))


# --- token merging ---------------------------------------------------------------------------------------

def token_merging_ratio(p: Any, info: PassInfo) -> float:
    """A1111's get_token_merging_ratio: the hires pass `token_merging_ratio_hr` or else the plain ratio;
    img2img `token_merging_ratio` when the request overrides it, else `token_merging_ratio_img2img` or else
    the plain ratio."""
    o = p.options
    plain = float(o.get("token_merging_ratio", 0.0) or 0.0)
    if info.pass_no == 2:
        return float(o.get("token_merging_ratio_hr", 0.0) or 0.0) or plain
    if info.img2img:
        overridden = "token_merging_ratio" in (getattr(p.request, "override_settings", None) or {})
        return (plain if overridden else 0.0) or float(o.get("token_merging_ratio_img2img", 0.0) or 0.0) or plain
    return plain


def token_merging_for_pass(p: Any, info: PassInfo) -> TokenMerging | None:
    ratio = token_merging_ratio(p, info)
    if ratio <= 0:
        return None
    p.extra_generation_params["Token merging ratio hr" if info.pass_no == 2 else "Token merging ratio"] = ratio
    return TokenMerging(ratio)


# --- Kohya Deep Shrink -----------------------------------------------------------------------------------

def _entry(req: Any, title: str) -> Any:
    return next((v for k, v in (getattr(req, "alwayson_scripts", None) or {}).items()
                 if str(k).lower() == title.lower()), None)


def request_deep_shrink(req: Any) -> DeepShrink | None:
    """The request's "Kohya HRFix Integrated" entry, checked (Forge's eight args in Forge's order; fewer
    take Forge's defaults), as a DeepShrink template; None when absent or not enabled."""
    entry = _entry(req, KOHYA)
    if not isinstance(entry, dict) or not isinstance(entry.get("args"), list):
        return None
    args = entry["args"]
    where = f"alwayson_scripts.{KOHYA}.args"
    if len(args) > len(KOHYA_DEFAULTS):
        raise InvalidRequest(where, f"takes {len(KOHYA_DEFAULTS)} arguments [{', '.join(KOHYA_ARGS)}], "
                             f"got {len(args)}")
    values = list(args) + list(KOHYA_DEFAULTS[len(args):])
    for i in (0, 5):
        if not (isinstance(values[i], bool) or values[i] in (0, 1)):
            raise InvalidRequest(f"{where}[{i}]", f"{KOHYA_ARGS[i]} must be true or false, got {values[i]!r}")
    for i, (lo, hi) in _KOHYA_RANGES.items():
        v = values[i]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi or (i == 1 and v != int(v)):
            kind = "a whole number" if i == 1 else "a number"
            raise InvalidRequest(f"{where}[{i}]", f"{KOHYA_ARGS[i]} must be {kind} from {lo} to {hi}, got {v!r}")
    for i in (6, 7):
        if values[i] not in METHODS:
            raise InvalidRequest(f"{where}[{i}]", f"{KOHYA_ARGS[i]} must be one of {', '.join(METHODS)}; "
                                 f"got {values[i]!r}")
    if not values[0]:
        return None
    return DeepShrink(int(values[1]), float(values[2]), float(values[3]), float(values[4]), bool(values[5]),
                      values[6], values[7])


def deep_shrink_for_pass(p: Any, info: PassInfo) -> DeepShrink | None:
    """Forge applies the patch before every sampling (both passes, img2img), writing its infotext keys."""
    template = request_deep_shrink(p.request)
    if template is None:
        return None
    p.extra_generation_params.update({
        "kohya_hrfix_enabled": True, "kohya_hrfix_block_number": template.block_number,
        "kohya_hrfix_downscale_factor": template.downscale_factor,
        "kohya_hrfix_start_percent": template.start_percent, "kohya_hrfix_end_percent": template.end_percent,
        "kohya_hrfix_downscale_after_skip": template.downscale_after_skip,
        "kohya_hrfix_downscale_method": template.downscale_method,
        "kohya_hrfix_upscale_method": template.upscale_method})
    return template


# --- always-on titles ------------------------------------------------------------------------------------

def _kohya_info(_img2img: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, (label, value) in enumerate(zip(KOHYA_LABELS, KOHYA_DEFAULTS)):
        arg: dict[str, Any] = {"label": label, "value": value}
        if i in _KOHYA_RANGES:
            arg["minimum"], arg["maximum"] = _KOHYA_RANGES[i]
        if i in (6, 7):
            arg["choices"] = list(METHODS)
        out.append(arg)
    return out


def register(extensions: Any) -> None:
    """List `Hypertile` (A1111's built-in script: no args of its own, the `hypertile_*` options switch it on;
    args sent are accepted and ignored, as A1111's script ignores them) and `Kohya HRFix Integrated`
    among the always-on scripts. A loaded extension of the same name keeps the name."""
    from pipeline.jobs.extensions import Extension

    if HYPERTILE.lower() not in extensions.names():
        extensions.register(Extension(HYPERTILE, "built-in (pipeline/jobs/speed.py)", {}, lambda _i: []))
    if KOHYA.lower() not in extensions.names():
        extensions.register(Extension(KOHYA, "built-in (pipeline/jobs/speed.py)", {}, _kohya_info))


def check_request(req: Any) -> None:
    """The checks a job's speed settings need before it is queued (a 4xx naming the argument)."""
    request_deep_shrink(req)
