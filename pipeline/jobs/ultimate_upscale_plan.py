"""The geometry of Ultimate SD Upscale: the model-upscale factors, the tile grid, and every inpaint pass
(redraw tiles and seam fixes) as a mask patch placed on the whole image plus the settings it runs with.

Grid: `rows = ceil(H / tile_h)`, `cols = ceil(W / tile_w)` tiles from the top-left, not overlapping (the
right and bottom ones may reach past the image; the mask is clipped there). Each pass is an "only masked"
inpaint of the whole current image with a mask that is black except for its patch:
- redraw: a white tile rectangle including its far edge (one pixel wider and taller than the tile, as the
  extension draws it), processed at `ceil((tile + padding) / 64) * 64` per side; Linear goes row by row,
  Chess first does the tiles whose (row + column) is even, then the others;
- band pass: for each interior seam a band `seams_fix_width` wide across the whole image whose value rises
  to white on the seam and falls again, no mask blur, processed at (band + 2 * padding) x the image length;
- half tile: tile-sized patches offset by half a tile onto every horizontal seam (value rising to white on
  the seam and falling again across it), then every vertical one, processed at tile size;
- half tile + intersections: the same, then a radial patch (white in its centre, black from half a tile out)
  on every interior tile corner, padding 0."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.jobs.img2img import masks

LINEAR, CHESS, NO_REDRAW = 0, 1, 2
NO_SEAMS_FIX, BAND_PASS, HALF_TILE, HALF_TILE_INTERSECTIONS = 0, 1, 2, 3


def upscale_factors(scale: int) -> list[int]:
    """The model passes for an integer upscale `scale`: x4, x3 and x2 passes whose product is `scale`,
    largest first; a scale that is no such product is raised to the next one that is (5 -> 6 = 3 * 2,
    7 -> 8 = 4 * 2). Scale 1 needs no pass."""
    while True:
        factors, rest = [], scale
        while rest > 1:
            f = next((f for f in (4, 3, 2) if rest % f == 0), 0)
            if not f:
                break
            factors.append(f)
            rest //= f
        if rest <= 1:
            return factors
        scale += 1


@dataclass(frozen=True)
class InpaintPass:
    """One img2img call: a patch of `shape` and `size` at `at` on a black mask of the whole image; the
    call's processing size, only-masked padding, mask blur, and whether it is a seam fix (seams_fix_denoise).
    Shapes: "rect" white; "tent y" / "tent x" rising to white mid-way along y / x, then falling; "radial"."""

    kind: str  # "redraw", "band", "half tile", "intersection"
    at: tuple[int, int]
    shape: str
    size: tuple[int, int]
    width: int
    height: int
    padding: int
    mask_blur: int
    seam_fix: bool

    def patch(self) -> Image.Image:
        w, h = self.size
        if self.shape == "rect":
            return Image.new("L", (w, h), 255)
        if self.shape == "radial":
            return radial(w, h)
        return tent(w, h, vertical=self.shape == "tent y")

    def mask(self, width: int, height: int) -> Image.Image:
        out = Image.new("L", (width, height))
        out.paste(self.patch(), self.at)
        return out

    def region(self, width: int, height: int) -> tuple[tuple[int, int, int, int], Image.Image] | None:
        """Where an "only masked" inpaint of a width x height image with this mask can change pixels: the
        crop box (x1, y1, x2, y2) A1111 takes (blurred mask's bounding box + padding, grown to the
        processing aspect ratio), and the blurred mask cut to that box; None when the mask is empty.

        Worked on a window around the patch, not the whole image, and exact: the blur only reaches
        `int(2.5 * sigma + 0.5)` px, so a window 2 * reach + 2 wider on every side sees only zeros at its
        edges, as the whole image would. An inpaint of the box with this (already blurred) mask gives the
        pixels of the whole-image inpaint inside the box; outside it the image is unchanged."""
        reach = int(2.5 * self.mask_blur + 0.5) if self.mask_blur > 0 else 0
        margin = 2 * reach + 2
        (x, y), (pw, ph) = self.at, self.size
        x0, y0, x1, y1 = max(x - margin, 0), max(y - margin, 0), min(x + pw + margin, width), \
            min(y + ph + margin, height)
        if x0 >= x1 or y0 >= y1:
            return None
        window = Image.new("L", (x1 - x0, y1 - y0))
        window.paste(self.patch(), (x - x0, y - y0))
        window = masks.blur(window, self.mask_blur, self.mask_blur)
        bbox = window.getbbox()
        if bbox is None:
            return None
        box = masks.crop_box((bbox[0] + x0, bbox[1] + y0, bbox[2] + x0, bbox[3] + y0), (width, height),
                             self.padding, self.width, self.height)
        cut = Image.new("L", (box[2] - box[0], box[3] - box[1]))
        cut.paste(window, (x0 - box[0], y0 - box[1]))
        return box, cut


@dataclass(frozen=True)
class Plan:
    """Tiles of tile_w x tile_h over a width x height image: `rows` x `cols`."""

    width: int
    height: int
    tile_w: int
    tile_h: int

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.tile_h)

    @property
    def cols(self) -> int:
        return math.ceil(self.width / self.tile_w)

    def tile_order(self, mode: int) -> list[tuple[int, int]]:
        """(row, col) of the tiles redrawn, in order."""
        cells = _cells(self.rows, self.cols)
        if mode == CHESS:
            return [rc for rc in cells if sum(rc) % 2 == 0] + [rc for rc in cells if sum(rc) % 2 == 1]
        return cells if mode == LINEAR else []

    def redraw(self, mode: int, padding: int, mask_blur: int) -> list[InpaintPass]:
        tw, th = self.tile_w, self.tile_h
        w, h = round_up(tw + padding, 64), round_up(th + padding, 64)
        return [InpaintPass("redraw", (c * tw, r * th), "rect", (tw + 1, th + 1), w, h, padding, mask_blur,
                            False) for r, c in self.tile_order(mode)]

    def seams_fix(self, mode: int, band_width: int, padding: int, mask_blur: int) -> list[InpaintPass]:
        tw, th, rows, cols, bw = self.tile_w, self.tile_h, self.rows, self.cols, band_width
        if mode == BAND_PASS:
            across = round_up(bw + 2 * padding, 8)
            return ([InpaintPass("band", (c * tw - bw // 2, 0), "tent x", (bw, self.height), across,
                                 round_up(self.height, 8), padding, 0, True) for c in range(1, cols)]
                    + [InpaintPass("band", (0, r * th - bw // 2), "tent y", (self.width, bw),
                                   round_up(self.width, 8), across, padding, 0, True)
                       for r in range(1, rows)])
        if mode not in (HALF_TILE, HALF_TILE_INTERSECTIONS):
            return []
        w, h = round_up(tw, 8), round_up(th, 8)

        def at_tile(kind: str, shape: str, cells: list[tuple[int, int]], dx: int, dy: int,
                    pad: int) -> list[InpaintPass]:
            return [InpaintPass(kind, (c * tw + dx, r * th + dy), shape, (tw, th), w, h, pad, mask_blur, True)
                    for r, c in cells]

        passes = at_tile("half tile", "tent y", _cells(rows - 1, cols), 0, th // 2, padding)
        passes += at_tile("half tile", "tent x", _cells(rows, cols - 1), tw // 2, 0, padding)
        if mode == HALF_TILE_INTERSECTIONS:
            passes += at_tile("intersection", "radial", _cells(rows - 1, cols - 1), tw // 2, th // 2, 0)
        return passes


def _cells(rows: int, cols: int) -> list[tuple[int, int]]:
    return [(r, c) for r in range(rows) for c in range(cols)]


def round_up(value: int, step: int) -> int:
    return max(step, math.ceil(value / step) * step)


def _ramp(n: int) -> np.ndarray:
    """n values rising from near 0 to near 255 (pixel centres)."""
    return (np.arange(n, dtype=np.float32) + 0.5) / max(n, 1) * 255


def tent(width: int, height: int, vertical: bool) -> Image.Image:
    """A width x height L patch that rises from black to white over its first half and falls back over its
    second half, along y (`vertical`) or along x; constant the other way."""
    n = height if vertical else width
    profile = np.concatenate([_ramp(n // 2), _ramp(n - n // 2)[::-1]])
    arr = np.tile(profile[:, None], (1, width)) if vertical else np.tile(profile[None, :], (height, 1))
    return Image.fromarray(np.round(arr).astype(np.uint8), "L")


def radial(width: int, height: int) -> Image.Image:
    """White in the centre falling linearly to black at the edge midpoints (an ellipse), black beyond."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = np.hypot((x + 0.5 - width / 2) / (width / 2), (y + 0.5 - height / 2) / (height / 2))
    return Image.fromarray(np.round(np.clip(1 - r, 0, 1) * 255).astype(np.uint8), "L")
