"""Inpainting masks as A1111 v1.10 prepares them: white = repaint.

`binary_mask` (alpha when the image is not opaque, rounded at 128) -> optional invert -> Gaussian blur
along x then y -> either "only masked" (`crop_region`: the blurred mask's bounding box plus padding,
grown to the output's aspect ratio) or "whole picture" (mask resized like the image, overlay mask doubled).
`fill` (masked content 0) paints the hole with the surrounding colours; `latent_mask` is the mask at
latent size, which sampling blends with."""
from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

# (radius, repeats) of the blur cascade that spreads unmasked colours into the hole
_FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


def binary_mask(mask: Image.Image, round_: bool = True) -> Image.Image:
    """An L image: an RGBA mask with any non-opaque pixel is its alpha channel (rounded at 128 when
    `round_`); anything else is its luminance."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        alpha = mask.getchannel("A")
        return alpha.point(lambda v: 255 if v > 128 else 0) if round_ else alpha
    return mask.convert("L")


def blur(mask: Image.Image, blur_x: int, blur_y: int) -> Image.Image:
    """Separable Gaussian blur with sigma blur_x along x, then blur_y along y (kernel 2*int(2.5s+0.5)+1)."""
    arr = np.asarray(mask.convert("L"))
    for sigma, horizontal in ((blur_x, True), (blur_y, False)):
        if sigma > 0:
            k = 2 * int(2.5 * sigma + 0.5) + 1
            arr = cv2.GaussianBlur(arr, (k, 1) if horizontal else (1, k), sigma)
    return Image.fromarray(arr)


def prepare_mask(mask: Image.Image, *, invert: bool, blur_x: int, blur_y: int, round_: bool) -> Image.Image:
    m = binary_mask(mask, round_)
    if invert:
        m = ImageOps.invert(m)
    return blur(m, blur_x, blur_y)


def crop_region(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """"Only masked": the box (x1, y1, x2, y2) of the mask's non-zero pixels plus `padding`, clamped to the
    mask, then grown on its short side to the aspect ratio of width:height (centred, shifted back inside,
    clamped). None for an empty mask."""
    box = mask.getbbox()
    return None if box is None else crop_box(box, mask.size, padding, width, height)


def crop_box(box: tuple[int, int, int, int], size: tuple[int, int], padding: int, width: int,
             height: int) -> tuple[int, int, int, int]:
    """`crop_region` of a mask of `size` whose non-zero pixels have the bounding box `box`."""
    w, h = size
    x1, y1, x2, y2 = max(box[0] - padding, 0), max(box[1] - padding, 0), min(box[2] + padding, w), \
        min(box[3] + padding, h)
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _grow(y1, y2, (x2 - x1) * height / width, h)
    else:
        x1, x2 = _grow(x1, x2, (y2 - y1) * width / height, w)
    return x1, y1, x2, y2


def _grow(lo: int, hi: int, want: float, limit: int) -> tuple[int, int]:
    """Widen [lo, hi) to about `want`, centred; shift back inside [0, limit) and clamp."""
    diff = int(want - (hi - lo))
    lo -= diff // 2
    hi += diff - diff // 2
    if hi >= limit:
        lo -= hi - limit
        hi = limit
    if lo < 0:
        hi -= lo
        lo = 0
    return lo, min(hi, limit)


def overlay_mask_whole(mask: Image.Image) -> Image.Image:
    """"Whole picture": the composite mask is the mask doubled and clipped (>= 128 is fully repainted)."""
    arr = np.asarray(mask.convert("L"), dtype=np.float32) * 2
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def overlay(image: Image.Image, overlay_mask: Image.Image) -> Image.Image:
    """The original pixels with alpha = 255 - mask (RGBA), composited over the result at the end."""
    out = image.convert("RGBA")
    out.putalpha(ImageOps.invert(overlay_mask.convert("L")))
    return out


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Masked content "fill": the hole takes the colours around it, spread by a cascade of blurs of the
    unmasked pixels (premultiplied, so the hole adds no black), each composited over the last."""
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    out = Image.new("RGBA", image.size)
    for radius, repeats in _FILL_PASSES:
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(blurred)
    return out.convert("RGB")


def latent_mask(mask: Image.Image, latent_h: int, latent_w: int, round_: bool) -> torch.Tensor:
    """(1, 1, h, w) repaint mask at latent size (PIL bicubic), rounded to 0/1 when `round_`."""
    small = mask.convert("L").resize((latent_w, latent_h), Image.Resampling.BICUBIC)
    arr = np.asarray(small, dtype=np.float32) / 255.0
    if round_:
        arr = np.around(arr)
    return torch.from_numpy(arr.copy())[None, None]
