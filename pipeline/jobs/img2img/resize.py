"""img2img's four resize modes (A1111's `resize_image`), as geometry first and pixels second.

0 just resize: stretch to width x height. 1 crop and resize: scale to cover, centre, crop the overshoot.
2 resize and fill: scale to fit, centre, and fill the bands by stretching the image's edge row/column.
3 latent upscale: the image is encoded at its own size and the latent interpolated (run.py); a mask or an
overlay in this mode is stretched like mode 0."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL, LATENT_UPSCALE = 0, 1, 2, 3
# (image, width, height) -> the image at exactly width x height: Lanczos, or an upscaler then Lanczos
Scaler = Callable[[Image.Image, int, int], Image.Image]


def lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    return image if image.size == (width, height) else image.resize((width, height), Image.Resampling.LANCZOS)


@dataclass(frozen=True)
class Placement:
    """Where the scaled source lands on the width x height canvas: scaled size and top-left offset
    (negative offsets crop). `fill` says the bands left uncovered are to be filled from the edges."""

    scaled_w: int
    scaled_h: int
    left: int
    top: int
    fill: bool = False


def placement(mode: int, src_w: int, src_h: int, width: int, height: int) -> Placement:
    """The geometry of `resize_image` for a src_w x src_h image and a width x height target."""
    if mode in (JUST_RESIZE, LATENT_UPSCALE):
        return Placement(width, height, 0, 0)
    ratio, src_ratio = width / height, src_w / src_h
    cover = mode == CROP_AND_RESIZE
    # cover: the side that would fall short decides; fit: the side that would overshoot decides
    by_width = ratio > src_ratio if cover else ratio < src_ratio
    if by_width:
        w, h = width, src_h * width // src_w
    else:
        w, h = src_w * height // src_h, height
    return Placement(w, h, width // 2 - w // 2, height // 2 - h // 2, fill=not cover)


def resize_image(mode: int, image: Image.Image, width: int, height: int, scale: Scaler = lanczos) -> Image.Image:
    """`image` at width x height by `mode`; the result keeps the image's mode (RGB, L, ...)."""
    pl = placement(mode, image.width, image.height, width, height)
    if (pl.scaled_w, pl.scaled_h, pl.left, pl.top) == (width, height, 0, 0):
        return scale(image, width, height)
    scaled = scale(image, pl.scaled_w, pl.scaled_h)
    out = Image.new(image.mode, (width, height))
    out.paste(scaled, (pl.left, pl.top))
    if pl.fill:
        _fill_bands(out, scaled, pl, width, height)
    return out


def _fill_bands(out: Image.Image, scaled: Image.Image, pl: Placement, width: int, height: int) -> None:
    """Stretch the scaled image's outermost row (column) over the band above and below it (left, right)."""
    if pl.scaled_w == width and pl.top > 0:
        top_row = scaled.crop((0, 0, width, 1)).resize((width, pl.top))
        out.paste(top_row, (0, 0))
        below = height - (pl.top + pl.scaled_h)
        if below > 0:
            out.paste(scaled.crop((0, pl.scaled_h - 1, width, pl.scaled_h)).resize((width, below)),
                      (0, pl.top + pl.scaled_h))
    elif pl.scaled_h == height and pl.left > 0:
        out.paste(scaled.crop((0, 0, 1, height)).resize((pl.left, height)), (0, 0))
        right = width - (pl.left + pl.scaled_w)
        if right > 0:
            out.paste(scaled.crop((pl.scaled_w - 1, 0, pl.scaled_w, height)).resize((right, height)),
                      (pl.left + pl.scaled_w, 0))
