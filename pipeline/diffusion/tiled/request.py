"""A request's tiling, resolved before the job is queued: the hiresd field `tiled_diffusion` (pixels) or the
Tiled Diffusion extension's always-on entry `alwayson_scripts: {"Tiled Diffusion": {"args": [...]}}`
(its positional args, sizes in latent cells), either giving `TileSettings`.

The extension's args, in its order (reference §5.1): enabled, method, overwrite_size, keep_input_size,
image_width, image_height, tile_width, tile_height, overlap, tile_batch_size, upscaler_name, scale_factor,
noise_inverse, noise_inverse_steps, retouch, renoise_strength, renoise_kernel, control_tensor_cpu,
enable_bbox_control, draw_background, causal_layers, then 8 regions of 10 values each. Missing trailing
args take the extension's defaults. What hiresd does not implement (overwrite_size, an img2img upscaler,
noise inversion, region control) is a 400 naming the argument when switched on; the rest is accepted.
`keep_input_size` (img2img: sample at the init image's size) is applied by `keeps_input_size`."""
from __future__ import annotations

from typing import Any

from pipeline.runtime.errors import InvalidRequest

from .merge import METHODS, TileSettings

NAME = "Tiled Diffusion"
KEY = NAME.lower()
FIXED_ARGS = ("enabled", "method", "overwrite_size", "keep_input_size", "image_width", "image_height",
              "tile_width", "tile_height", "overlap", "tile_batch_size", "upscaler_name", "scale_factor",
              "noise_inverse", "noise_inverse_steps", "retouch", "renoise_strength", "renoise_kernel",
              "control_tensor_cpu", "enable_bbox_control", "draw_background", "causal_layers")
REGIONS, REGION_ARGS = 8, 10
MAX_ARGS = len(FIXED_ARGS) + REGIONS * REGION_ARGS
# The extension's defaults (txt2img: MultiDiffusion, overlap 48; img2img: Mixture of Diffusers, overlap 8)
DEFAULTS: dict[str, Any] = {"enabled": False, "overwrite_size": False, "keep_input_size": True,
                            "image_width": 1024, "image_height": 1024, "tile_width": 96, "tile_height": 96,
                            "tile_batch_size": 4, "upscaler_name": "None", "scale_factor": 2.0,
                            "noise_inverse": False, "noise_inverse_steps": 10, "retouch": 1.0,
                            "renoise_strength": 1.0, "renoise_kernel": 64, "control_tensor_cpu": False,
                            "enable_bbox_control": False, "draw_background": False, "causal_layers": False}
MIN_TILE = 8  # latent cells (64 px), the field's minimum too


def _where(i: int) -> str:
    return f"alwayson_scripts.{NAME}.args[{i}] ({FIXED_ARGS[i]})"


def _flag(args: list[Any], i: int) -> bool:
    value = args[i]
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise InvalidRequest(_where(i), f"expected true or false, got {value!r}")


def _int(args: list[Any], i: int, low: int, high: int) -> int:
    value = args[i]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise InvalidRequest(_where(i), f"expected a whole number from {low} to {high}, got {value!r}")
    if not low <= int(value) <= high:
        raise InvalidRequest(_where(i), f"must be from {low} to {high}, got {int(value)}")
    return int(value)


def _off(args: list[Any], i: int, what: str) -> None:
    if _flag(args, i):
        raise InvalidRequest(_where(i), f"{what} is not available in hiresd; send false")


def _tab_defaults(img2img: bool) -> dict[str, Any]:
    return {**DEFAULTS, "method": "Mixture of Diffusers" if img2img else "MultiDiffusion",
            "overlap": 8 if img2img else 48}


def _with_defaults(raw: list[Any], img2img: bool) -> list[Any]:
    """The args with the tab's defaults for the missing trailing ones."""
    defaults = _tab_defaults(img2img)
    return list(raw) + [defaults[name] for name in FIXED_ARGS[len(raw):]]


def from_alwayson_args(raw: list[Any], img2img: bool) -> TileSettings | None:
    """The extension's positional args as TileSettings (None when `enabled` is false)."""
    if len(raw) > MAX_ARGS:
        raise InvalidRequest(f"alwayson_scripts.{NAME}.args", f"{len(raw)} args; the extension takes at most "
                             f"{MAX_ARGS} ({len(FIXED_ARGS)} settings, then {REGIONS} regions of {REGION_ARGS})")
    args = _with_defaults(raw, img2img)
    if not _flag(args, 0):
        return None
    if args[1] not in METHODS:
        raise InvalidRequest(_where(1), f"unknown method {args[1]!r}", list(METHODS))
    _off(args, 2, "overwrite_size (generating at image_width x image_height); set width/height instead")
    _flag(args, 3)  # keep_input_size: read by `keeps_input_size` (img2img only)
    tile_w = _int(args, 6, MIN_TILE, 1024)
    tile_h = _int(args, 7, MIN_TILE, 1024)
    overlap = _int(args, 8, 0, 512)
    if overlap >= min(tile_w, tile_h):
        raise InvalidRequest(_where(8), f"overlap {overlap} must be smaller than the tile ({tile_w}x{tile_h} "
                             "latent cells)")
    batch = _int(args, 9, 1, 64)
    if args[10] not in (None, "", "None"):
        raise InvalidRequest(_where(10), f"upscaling the init image ({args[10]!r}) inside Tiled Diffusion is not "
                             "available in hiresd; send 'None' and upscale first (/sdapi/v1/extra-single-image, "
                             "or the img2img script 'sd upscale')")
    _off(args, 12, "noise inversion")
    _off(args, 18, "region control (enable_bbox_control)")
    for k in range(REGIONS):  # region boxes only matter with region control, which is off
        first = len(FIXED_ARGS) + k * REGION_ARGS
        if first < len(args) and args[first] not in (False, 0, None):
            raise InvalidRequest(f"alwayson_scripts.{NAME}.args[{first}] (region {k + 1} enable)",
                                 "region control is not available in hiresd; send false")
    return TileSettings(str(args[1]), tile_w, tile_h, overlap, batch)


def request_tiles(req: Any, img2img: bool) -> TileSettings | None:
    """The tiling a request asks for: its `tiled_diffusion` field or its "Tiled Diffusion" always-on entry
    (not both); None for neither."""
    field = getattr(req, "tiled_diffusion", None)
    from_field = None
    if field is not None and field.enabled:
        from_field = TileSettings(field.method, field.tile_width // 8, field.tile_height // 8, field.overlap // 8,
                                  field.tile_batch_size)
    args = _entry_args(req)
    from_args = from_alwayson_args(args, img2img) if args is not None else None
    if from_field is not None and from_args is not None:
        raise InvalidRequest("tiled_diffusion", f"tiling asked twice (the field and alwayson_scripts.{NAME}); "
                             "send one of them")
    return from_field or from_args


def _entry_args(req: Any) -> list[Any] | None:
    entry = next((v for k, v in (getattr(req, "alwayson_scripts", None) or {}).items()
                  if str(k).lower() == KEY), None)
    args = entry.get("args") if isinstance(entry, dict) else None
    return list(args) if isinstance(args, list) else None


def keeps_input_size(req: Any) -> bool:
    """img2img with the extension's entry enabled and `keep_input_size` (args[3], on by default): the job
    samples at the init image's size, not the request's width/height, as the extension sets them (its
    upscaler, which would come first, is refused in hiresd). Call after `request_tiles` validated the args."""
    raw = _entry_args(req)
    if raw is None:
        return False
    args = _with_defaults(raw, img2img=True)
    return _flag(args, 0) and _flag(args, 3)


def check_model(models: Any, checkpoint: str, tiles: TileSettings | None) -> None:
    """Before the job is queued: tiles cannot run on a 9-channel inpainting checkpoint (its extra input is
    the whole picture's mask and masked image). Read from the file's header (safetensors) without loading;
    other files are checked when the pass starts."""
    if tiles is None or not hasattr(models, "find"):
        return
    try:
        info = models.find(checkpoint)
        if info.kind != "safetensors":
            return
        from pipeline.models.checkpoints.loader import detect_checkpoint

        in_channels = detect_checkpoint(info).unet_in_channels
    except Exception:  # noqa: BLE001 - an unreadable checkpoint fails when loaded, with its own message
        return
    if in_channels != 4:
        raise InvalidRequest("tiled_diffusion", f"tiled sampling is not available with the {in_channels}-channel "
                             f"inpainting checkpoint {info.title!r}; send the request without tiling (neither "
                             f"tiled_diffusion nor alwayson_scripts.{NAME})")


_LABELS = ("Enable Tiled Diffusion", "Method", "Overwrite image size", "Keep input image size", "Image width",
           "Image height", "Latent tile width", "Latent tile height", "Latent tile overlap",
           "Latent tile batch size", "Upscaler", "Scale Factor", "Enable Noise Inversion", "Inversion steps",
           "Retouch", "Renoise strength", "Renoise kernel size", "Move ControlNet tensor to CPU (if applicable)",
           "Enable Control", "Draw full canvas background", "Causalize layers")
_RANGES = {"image_width": (256, 16384, 16), "image_height": (256, 16384, 16),
           "tile_width": (MIN_TILE, 1024, 16), "tile_height": (MIN_TILE, 1024, 16), "overlap": (0, 512, 4),
           "tile_batch_size": (1, 64, 1), "scale_factor": (1.0, 8.0, 0.05), "noise_inverse_steps": (1, 200, 1),
           "retouch": (0.0, 100.0, 0.1), "renoise_strength": (0.0, 2.0, 0.01), "renoise_kernel": (2, 512, 1)}


def script_info_args(img2img: bool) -> list[dict[str, Any]]:
    """/sdapi/v1/script-info `args` of the entry: the extension's settings in args order, with the defaults
    of the tab (regions are not listed: region control is not available)."""
    defaults = _tab_defaults(img2img)
    out = []
    for name, label in zip(FIXED_ARGS, _LABELS):
        arg: dict[str, Any] = {"label": label, "value": defaults[name]}
        if name == "method":
            arg["choices"] = list(METHODS)
        if name in _RANGES:
            arg["minimum"], arg["maximum"], arg["step"] = _RANGES[name]
        out.append(arg)
    return out


def register(extensions: Any) -> None:
    """List "Tiled Diffusion" among the always-on scripts (so the entry is not an unknown script's 422, and
    /sdapi/v1/scripts shows it). It has no hooks: `request_tiles` reads its args while preparing the job.
    A loaded extension of the same name keeps the name."""
    from pipeline.jobs.extensions import Extension

    if KEY not in extensions.names():
        extensions.register(Extension(NAME, "built-in (pipeline/tiled)", {}, script_info_args))
