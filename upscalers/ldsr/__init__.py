"""LDSR (latent diffusion super-resolution, CompVis' 4x SR model) from A1111's `models/LDSR` files: the model
rebuilt from the checkpoint's tensors, its DDIM sampler over tiles, A1111's pre- and post-processing."""

from .checkpoint import LdsrFiles, LdsrModel, find_files, load_model
from .store import NAME, LdsrStore
from .upscale import DEFAULT_STEPS, LdsrOptions, output_size, super_resolution

__all__ = [
    "DEFAULT_STEPS",
    "NAME",
    "LdsrFiles",
    "LdsrModel",
    "LdsrOptions",
    "LdsrStore",
    "find_files",
    "load_model",
    "output_size",
    "super_resolution",
]
