"""img2img's colour correction (option `img2img_color_correction`), as A1111 v1.10 does it: each init image,
as it goes into the model (resized, cropped, masked-content filled), is the target; every result is
matched to it channel by channel in CIE L*a*b* (histogram matching, 8-bit), then blended in "luminosity"
mode: the matched picture's hue and saturation with the sampled picture's own luminosity.

A1111 calls scikit-image's `match_histograms` and the `blendmodes` package; both are written out here
with numpy (same cumulative-histogram interpolation, the same truncation to 8 bits, the same non-separable
luminosity blend with weights 0.299/0.587/0.114 and its colour clipping)."""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def correction_target(image: Image.Image) -> np.ndarray:
    """The L*a*b* pixels (uint8, OpenCV's scaling) that results are matched to."""
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2LAB)


def _match_channel(source: np.ndarray, template: np.ndarray) -> np.ndarray:
    """One uint8 channel's values mapped so that its cumulative histogram follows the template's."""
    src = source.reshape(-1)
    src_counts = np.bincount(src)
    tmpl_counts = np.bincount(template.reshape(-1))
    tmpl_values = np.nonzero(tmpl_counts)[0]
    tmpl_counts = tmpl_counts[tmpl_values]
    src_quantiles = np.cumsum(src_counts) / src.size
    tmpl_quantiles = np.cumsum(tmpl_counts) / template.size
    mapped = np.interp(src_quantiles, tmpl_quantiles, tmpl_values)
    return mapped[src].reshape(source.shape).astype(np.uint8)  # truncating, as the uint8 result array does


def _lum(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _set_lum(rgb: np.ndarray, lum: np.ndarray) -> np.ndarray:
    """`rgb` moved to luminosity `lum`, out-of-range colours pulled back toward their luminosity."""
    out = rgb + (lum - _lum(rgb))[..., None]
    lum = _lum(out)
    low, high = out.min(axis=-1), out.max(axis=-1)
    under = low < 0
    out[under] = lum[under, None] + (out[under] - lum[under, None]) * lum[under, None] / (
        lum[under, None] - low[under, None])
    over = high > 1  # judged on the colours before the first clip, as blendmodes does
    out[over] = lum[over, None] + (out[over] - lum[over, None]) * (1 - lum[over, None]) / (
        high[over, None] - lum[over, None])
    return out


def apply_color_correction(target: np.ndarray, image: Image.Image) -> Image.Image:
    """`image` with the colours of `target` (from `correction_target`) and its own luminosity."""
    sample = np.asarray(image.convert("RGB"))
    lab = cv2.cvtColor(sample, cv2.COLOR_RGB2LAB)
    matched = np.stack([_match_channel(lab[..., c], target[..., c]) for c in range(3)], axis=-1)
    recoloured = cv2.cvtColor(matched, cv2.COLOR_LAB2RGB).astype(np.float64) / 255.0
    blended = _set_lum(recoloured, _lum(sample.astype(np.float64) / 255.0))
    return Image.fromarray(np.around(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8), "RGB")
