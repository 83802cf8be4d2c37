"""One LDSR pass as A1111's `super_resolution`: resize the input by factor / 4 (Lanczos, sides rounded up),
pad it with its edge pixels to multiples of 64 (at least 128), sample 4x, cut the padding off.

The output is 4 * ceil(side * factor / 4) a side (A1111's upscale loop then resizes it to its destination).
A1111 draws the noise from torch's global generator; here it comes from a generator seeded with `seed`, so
the same input gives the same image.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .checkpoint import SCALE, LdsrModel
from .sampler import STRIDE, TILE, sample

DEFAULT_STEPS = 100
"""A1111's `ldsr_steps`."""
DEFAULT_SEED = 0


@dataclass(frozen=True)
class LdsrOptions:
    """A1111's LDSR settings, as a job's options give them."""

    steps: int = DEFAULT_STEPS
    """`ldsr_steps`: DDIM steps per pass."""
    cached: bool = False
    """`ldsr_cached`: keep the model in memory between uses (else it is read from disk each time)."""
    seed: int = DEFAULT_SEED


def input_size(width: int, height: int, factor: float) -> tuple[int, int]:
    """The size the input is resized to before sampling: each side times factor / 4, rounded up."""
    rate = factor / SCALE
    return math.ceil(width * rate), math.ceil(height * rate)


def output_size(width: int, height: int, factor: float) -> tuple[int, int]:
    """What one LDSR pass returns for an input of this size and this requested factor."""
    w, h = input_size(width, height, factor)
    return w * SCALE, h * SCALE


def padded_size(width: int, height: int) -> tuple[int, int]:
    """Multiples of STRIDE (64), at least TILE (128) a side."""
    return (max(TILE, -(-width // STRIDE) * STRIDE), max(TILE, -(-height // STRIDE) * STRIDE))


def to_low_res(image: Image.Image, factor: float) -> tuple[torch.Tensor, tuple[int, int]]:
    """The padded conditioning image (1, 3, H, W) in [-1, 1] and the size before padding."""
    rgb = image.convert("RGB")
    size = input_size(rgb.width, rgb.height, factor)
    if factor != SCALE:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    array = np.asarray(rgb)
    pw, ph = padded_size(*size)
    array = np.pad(array, ((0, ph - size[1]), (0, pw - size[0]), (0, 0)), mode="edge")
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255.0
    return tensor * 2.0 - 1.0, size


def to_image(decoded: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """Clamp to [-1, 1], map to 0..255 truncating (as A1111's `astype(np.uint8)`), crop to 4x `size`."""
    pixels = ((decoded.float().clamp(-1.0, 1.0) + 1.0) / 2.0 * 255).cpu()
    array = pixels[0].permute(1, 2, 0).numpy().astype(np.uint8)
    return Image.fromarray(array[: size[1] * SCALE, : size[0] * SCALE], "RGB")


def super_resolution(
    model: LdsrModel,
    image: Image.Image,
    factor: float,
    options: LdsrOptions,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Image.Image:
    """One LDSR pass over `image` (RGB) for a requested `factor`; the result is `output_size(...)`."""
    low_res, size = to_low_res(image, factor)
    generator = torch.Generator().manual_seed(options.seed)
    decoded = sample(model, low_res.to(model.device), options.steps, generator, should_stop, on_step)
    return to_image(decoded, size)
