"""Bringing any PIL image to 8-bit RGB or RGBA, and splitting/merging its alpha."""

from __future__ import annotations

import numpy as np
from PIL import Image

_ALPHA_MODES = {"RGBA", "LA", "La", "RGBa", "PA"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def to_rgb_or_rgba(image: Image.Image) -> Image.Image:
    """An 8-bit RGB image, or RGBA when the input has transparency.

    16-bit greys ('I;16*', and 'I' as Pillow opens 16-bit PNGs) are scaled from 0..65535 to
    0..255 rather than clipped; 'F' is taken as 0..255. Palette images with a transparent colour
    become RGBA.
    """
    mode = image.mode
    if mode in ("RGB", "RGBA"):
        return image
    if mode in _SIXTEEN_BIT:
        grey = np.asarray(image).astype(np.float64)
        grey = np.clip(np.rint(np.clip(grey, 0, 65535) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        grey = np.clip(np.rint(np.nan_to_num(np.asarray(image, dtype=np.float64))), 0, 255)
        return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        has_alpha = "transparency" in image.info or image.palette is not None and image.palette.mode == "RGBA"
        return image.convert("RGBA" if has_alpha else "RGB")
    if mode in _ALPHA_MODES:
        return image.convert("RGBA")
    return image.convert("RGB")


def split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """(RGB part, alpha channel or None) of an RGB or RGBA image."""
    if image.mode == "RGBA":
        return image.convert("RGB"), image.getchannel("A")
    return image, None


def merge_alpha(rgb: Image.Image, alpha: Image.Image | None) -> Image.Image:
    """Put `alpha` (resized to fit with Lanczos if needed) back onto `rgb`."""
    if alpha is None:
        return rgb
    if alpha.size != rgb.size:
        alpha = alpha.resize(rgb.size, resample=Image.Resampling.LANCZOS)
    out = rgb.convert("RGBA")
    out.putalpha(alpha)
    return out


def text_info(image: Image.Image) -> dict[str, str]:
    """The text entries of `image.info` (PNG tEXt/iTXt chunks such as `parameters`)."""
    return {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
