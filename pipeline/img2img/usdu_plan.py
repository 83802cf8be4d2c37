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
    """One img2img call: `patch` (an L image) at `at` on a black mask of the whole image; the call's
    processing size, only-masked padding, mask blur, and whether it is a seam fix (seams_fix_denoise)."""

    kind: str  # "redraw", "band", "half tile", "intersection"
    at: tuple[int, int]
    patch: Image.Image
    width: int
    height: int
    padding: int
    mask_blur: int
    seam_fix: bool

    def mask(self, width: int, height: int) -> Image.Image:
        out = Image.new("L", (width, height))
        out.paste(self.patch, self.at)
        return out


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
        w, h = round_up(self.tile_w + padding, 64), round_up(self.tile_h + padding, 64)
        patch = Image.new("L", (self.tile_w + 1, self.tile_h + 1), 255)
        return [InpaintPass("redraw", (c * self.tile_w, r * self.tile_h), patch, w, h, padding, mask_blur,
                            False) for r, c in self.tile_order(mode)]

    def seams_fix(self, mode: int, band_width: int, padding: int, mask_blur: int) -> list[InpaintPass]:
        tw, th, rows, cols = self.tile_w, self.tile_h, self.rows, self.cols
        if mode == BAND_PASS:
            pw, ph = round_up(band_width + 2 * padding, 8), round_up(self.height, 8)
            across = tent(band_width, self.height, vertical=False)
            down = tent(self.width, band_width, vertical=True)
            return ([InpaintPass("band", (c * tw - band_width // 2, 0), across, pw, ph, padding, 0, True)
                     for c in range(1, cols)]
                    + [InpaintPass("band", (0, r * th - band_width // 2), down, round_up(self.width, 8),
                                   pw, padding, 0, True) for r in range(1, rows)])
        if mode not in (HALF_TILE, HALF_TILE_INTERSECTIONS):
            return []
        w, h = round_up(tw, 8), round_up(th, 8)

        def at_tile(kind: str, patch: Image.Image, cells: list[tuple[int, int]], dx: int, dy: int,
                    pad: int) -> list[InpaintPass]:
            return [InpaintPass(kind, (c * tw + dx, r * th + dy), patch, w, h, pad, mask_blur, True)
                    for r, c in cells]

        across_rows, across_cols = tent(tw, th, vertical=True), tent(tw, th, vertical=False)
        passes = at_tile("half tile", across_rows, _cells(rows - 1, cols), 0, th // 2, padding)
        passes += at_tile("half tile", across_cols, _cells(rows, cols - 1), tw // 2, 0, padding)
        if mode == HALF_TILE_INTERSECTIONS:
            passes += at_tile("intersection", radial(tw, th), _cells(rows - 1, cols - 1), tw // 2, th // 2, 0)
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
