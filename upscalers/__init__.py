"""Named pixel upscalers: built-ins, latent modes, spandrel model files, tiled inference,
the A1111 upscale loop and the extras operations. Knows nothing of `pipeline/` or `server/`."""

from .errors import (
    AmbiguousUpscaler,
    BadImage,
    DeviceOutOfMemory,
    FaceRestorationUnavailable,
    Interrupted,
    ModelLoadError,
    TooLarge,
    UnknownUpscaler,
    UnsafeModelFile,
    UpscalerError,
)
from .extras import DEFAULT_MAX_OUTPUT_PIXELS, ExtrasParams, format_infotext, html_info, run_extras
from .faces import FaceRestorer, FaceRestorers, detect_faces, restore_faces
from .latent import LATENT_MODES, LatentMode, interpolate_args, is_latent, latent_mode_names, resolve_latent
from .loop import UpscalePlan, check_budget, destination, plan_upscale, upscale
from .registry import BUILTIN_ENTRIES, LoadedModel, UpscalerEntry, UpscalerRegistry
from .tiling import DEFAULT_OVERLAP, DEFAULT_TILE, SizeSpec, upscale_array

__all__ = [
    "BUILTIN_ENTRIES",
    "DEFAULT_MAX_OUTPUT_PIXELS",
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "LATENT_MODES",
    "AmbiguousUpscaler",
    "BadImage",
    "DeviceOutOfMemory",
    "ExtrasParams",
    "FaceRestorationUnavailable",
    "FaceRestorer",
    "FaceRestorers",
    "Interrupted",
    "LatentMode",
    "LoadedModel",
    "ModelLoadError",
    "SizeSpec",
    "TooLarge",
    "UnknownUpscaler",
    "UnsafeModelFile",
    "UpscalePlan",
    "UpscalerEntry",
    "UpscalerError",
    "UpscalerRegistry",
    "check_budget",
    "destination",
    "detect_faces",
    "format_infotext",
    "html_info",
    "interpolate_args",
    "is_latent",
    "latent_mode_names",
    "plan_upscale",
    "resolve_latent",
    "restore_faces",
    "run_extras",
    "upscale",
    "upscale_array",
]
