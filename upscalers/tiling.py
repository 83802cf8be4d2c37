"""Tiled inference of an image model (spandrel does none), with feathered overlaps.

The image is cut into a grid of square tiles that overlap by at least `overlap` input pixels.
Each tile's output is weighted by a ramp that is ~0 within `overlap // 4` pixels of an inner tile
edge (where the tile lacked context) and rises linearly across the middle of the overlap; where
two tiles overlap by exactly `overlap` their weights sum to 1. Every output pixel is the weighted
mean of the tiles covering it.

Tiles run in raster order, and each output pixel goes to the uint8 result (on the host) as soon
as no later tile covers it. Weighted sums (float32, on the model's device) are kept only where a
later tile still adds to them: the current tile, the strip of it the next tile of the row
overlaps, and the strip of the row band the next row overlaps (overlap x scale rows x output
width). Besides the input and the result, memory is one tile's activations, a few tile-sized
buffers and that thin strip: it does not grow with the image's area, never a full-size float
image nor a tile-high band.

Out of memory (`torch.OutOfMemoryError`, or a RuntimeError saying "out of memory") on a tile
halves the tile size and that tile is redone as smaller tiles; the smaller size is kept for the
rest of the pass. Models whose tiling hint is "internal" are never tiled; "discouraged" ones run
on the whole image and are tiled only after an out-of-memory error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DeviceOutOfMemory, Interrupted

Tiling = Literal["supported", "discouraged", "internal"]
"""spandrel's tiling hint, lower case."""

DEFAULT_TILE = 192
"""Tile size in input pixels, as A1111's `ESRGAN_tile`; 0 means no tiling."""
DEFAULT_OVERLAP = 8
"""Tile overlap in input pixels, as A1111's `ESRGAN_tile_overlap`."""
# A1111's tile options by spandrel architecture: DAT and SwinIR read their own, every other model ESRGAN's
TILE_OPTIONS = {"DAT": ("DAT_tile", "DAT_tile_overlap"), "SwinIR": ("SWIN_tile", "SWIN_tile_overlap")}
MIN_TILE = 32
"""No tile is smaller than this (nor than 4 x overlap, nor than the model's minimum)."""

def tile_for(architecture: str | None, options: Mapping[str, Any]) -> tuple[int, int]:
    """(tile, overlap) in input pixels for a model of `architecture`, from A1111's options (`DAT_tile`,
    `SWIN_tile`, else `ESRGAN_tile`, and their `_overlap`s)."""
    tile_key, overlap_key = TILE_OPTIONS.get(architecture or "", ("ESRGAN_tile", "ESRGAN_tile_overlap"))
    return int(options.get(tile_key, DEFAULT_TILE)), int(options.get(overlap_key, DEFAULT_OVERLAP))


_MIN_WEIGHT = 1e-6

ShouldStop = Callable[[], bool]
OnTile = Callable[[int, int], None]


@dataclass(frozen=True)
class SizeSpec:
    """A model's input size requirements (a frozen copy of spandrel's `SizeRequirements`)."""

    minimum: int = 0
    """Smallest width and height."""
    multiple_of: int = 1
    """Width and height must be multiples of this."""
    square: bool = False
    """Width must equal height."""

    def padded(self, width: int, height: int) -> tuple[int, int]:
        """The smallest size >= (width, height) that meets the requirements."""
        w = -(-max(self.minimum, width) // self.multiple_of) * self.multiple_of
        h = -(-max(self.minimum, height) // self.multiple_of) * self.multiple_of
        if self.square:
            w = h = max(w, h)
        return w, h


class TileModel(Protocol):
    """What tiled inference needs of a loaded model (`registry.LoadedModel` is one)."""

    @property
    def scale(self) -> int: ...
    @property
    def output_channels(self) -> int: ...
    @property
    def tiling(self) -> Tiling: ...
    @property
    def size_requirements(self) -> SizeSpec: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def dtype(self) -> torch.dtype: ...
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """(1, C, H, W) in [0, 1] on `device` as `dtype` -> (1, C', H*scale, W*scale) in [0, 1]."""
        ...


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is a device (or host) out-of-memory error from torch."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def min_tile(overlap: int, req: SizeSpec) -> int:
    """The smallest tile size used with this overlap and these requirements."""
    size = max(MIN_TILE, 4 * overlap, req.minimum)
    return -(-size // req.multiple_of) * req.multiple_of


def initial_tile(
    width: int, height: int, tiling: Tiling, req: SizeSpec, tile: int, overlap: int
) -> int | None:
    """The tile size a pass starts with, or None to run the whole image at once."""
    if tile <= 0 or tiling != "supported":
        return None
    size = max(tile - tile % req.multiple_of, min_tile(overlap, req))
    if width <= size and height <= size:
        return None
    return size


def tile_starts(length: int, tile: int | None, overlap: int, multiple_of: int = 1) -> tuple[list[int], int]:
    """Tile origins along one axis and the common tile length (<= tile).

    Uses the fewest tiles of at most `tile` pixels that overlap by >= `overlap`, then shrinks
    them to the smallest equal length that still covers `length`, so the extra work is about
    (count - 1) * overlap pixels rather than up to a whole tile.
    """
    if tile is None or length <= tile:
        return [0], length
    count = math.ceil((length - overlap) / (tile - overlap))
    size = -(-(length - overlap) // count) + overlap
    size = min(tile, -(-size // multiple_of) * multiple_of)
    return [round(i * (length - size) / (count - 1)) for i in range(count)], size


def count_tiles(
    width: int,
    height: int,
    tiling: Tiling,
    req: SizeSpec,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
) -> int:
    """How many tiles one pass over a width x height image will report through `on_tile`."""
    size = initial_tile(width, height, tiling, req, tile, overlap)
    columns = tile_starts(width, size, overlap, req.multiple_of)[0]
    return len(columns) * len(tile_starts(height, size, overlap, req.multiple_of)[0])


def upscale_array(
    model: TileModel,
    image: np.ndarray,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    should_stop: ShouldStop | None = None,
    on_tile: OnTile | None = None,
) -> np.ndarray:
    """Run `model` over an H x W x C uint8 array; returns the (H*s) x (W*s) x C' uint8 result.

    `should_stop()` is called before every tile; when it returns true, Interrupted is raised and
    nothing is returned. `on_tile(done, total)` is called after every tile of the grid (an
    untiled run that falls back to tiles after an out-of-memory error reports the new grid).
    Raises DeviceOutOfMemory when even the smallest tile does not fit.
    """
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x C uint8 array, got {image.dtype} {image.shape}")
    return _Tiler(model, image, tile, overlap, should_stop).run(on_tile)


def _pad(t: torch.Tensor, pad_w: int, pad_h: int) -> torch.Tensor:
    """Pad right/bottom: mirror what exists, then repeat the edge for the rest."""
    h, w = t.shape[-2:]
    mirror_w, mirror_h = min(pad_w, w - 1), min(pad_h, h - 1)
    if mirror_w or mirror_h:
        t = F.pad(t, (0, mirror_w, 0, mirror_h), mode="reflect")
    if pad_w > mirror_w or pad_h > mirror_h:
        t = F.pad(t, (0, pad_w - mirror_w, 0, pad_h - mirror_h), mode="replicate")
    return t


def _edge_weights(start: int, length: int, total: int, overlap: int, scale: int) -> np.ndarray:
    """Output-space weights along one axis of a tile covering input [start, start + length)."""
    n = length * scale
    weights = np.ones(n, dtype=np.float32)
    if overlap <= 0:
        return weights
    margin = (overlap // 4) * scale
    ramp_len = max(overlap * scale - 2 * margin, 1)
    ramp = np.clip((np.arange(n, dtype=np.float32) + 0.5 - margin) / ramp_len, _MIN_WEIGHT, 1.0)
    if start > 0:
        weights = np.minimum(weights, ramp)
    if start + length < total:
        weights = np.minimum(weights, ramp[::-1])
    return weights


class _Regrid(Exception):
    """The untiled attempt ran out of memory before anything was accumulated."""


def _store(result: np.ndarray, top: int, left: int, block: torch.Tensor) -> None:
    """Write a (C, rows, columns) float block in [0, 1] into the uint8 result at (top, left);
    `block` is overwritten (fewer tile-sized temporaries: less for the allocator to hold)."""
    pixels = block.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    result[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels


class _Blend:
    """The weighted sums of one grid pass, kept only where a later tile still adds to them.

    Sums are (C + 1, rows, columns) float32 tensors on the model's device: C weighted channels,
    then the summed weight. `sums` covers the current grid tile (output rows [top, top + tile
    height), columns [left, left + tile width)); its sub-tiles after an out-of-memory error add
    to it too. When a tile starts, its first `kept` columns hold what the previous tile of the row
    left there and its top rows what the previous row left in `carry`; when it finishes, the part
    no later tile covers goes to the result, and the rest to `kept` columns and to `carry` for
    the next row. `carry` is one buffer: a tile reads its columns of the previous row's strip
    before it writes the columns it finishes for the next row's, and no later tile reads those.
    """

    def __init__(
        self, result: np.ndarray, width: int, height: int, carry_rows: int, device: torch.device
    ) -> None:
        self.result = result
        self.channels = result.shape[2]
        self.sums = torch.zeros((self.channels + 1, height, width), device=device, dtype=torch.float32)
        self.top = 0
        self.left = 0
        self.kept = 0
        """Columns at the left of `sums` carried over from the previous tile of the row."""
        self.carry = self.sums.new_empty((self.channels + 1, carry_rows, result.shape[1]))
        """Sums of output rows [top, top + rows) x the output width that earlier rows left."""
        self.rows = 0
        """The rows of `carry` that hold sums for the current row of tiles."""
        self.next_rows = 0

    def start_row(self, top: int) -> None:
        self.top, self.kept, self.rows, self.next_rows = top, 0, self.next_rows, 0

    def start_tile(self, left: int) -> None:
        sums, kept, rows = self.sums, self.kept, self.rows
        self.left = left
        sums[:, :, kept:] = 0
        if rows:
            sums[:, :rows, kept:] = self.carry[:, :rows, left + kept : left + sums.shape[2]]

    def add(self, out: torch.Tensor, weights: torch.Tensor, top: int, left: int) -> None:
        """Add a (sub-)tile's (C, h, w) output, which is overwritten, with its (h, w) weights at
        output (top, left)."""
        rows = slice(top - self.top, top - self.top + out.shape[1])
        cols = slice(left - self.left, left - self.left + out.shape[2])
        self.sums[: self.channels, rows, cols] += out.mul_(weights)
        self.sums[self.channels, rows, cols] += weights

    def finish_tile(self, right: int, bottom: int) -> None:
        """Output columns < right and rows < bottom are final: write them to the result."""
        sums, c = self.sums, self.channels
        height, width = sums.shape[1:]
        done_w, done_h = right - self.left, bottom - self.top
        block = sums[:c, :done_h, :done_w] / sums[c, :done_h, :done_w].clamp(min=_MIN_WEIGHT)
        _store(self.result, self.top, self.left, block)
        del block
        self.next_rows = height - done_h
        if self.next_rows:
            self.carry[:, : self.next_rows, self.left : right] = sums[:, done_h:, :done_w]
        self.kept = width - done_w
        if self.kept:
            sums[:, :, : self.kept] = sums[:, :, done_w:].clone()


class _Tiler:
    """State of one pass: the input, the result, the blend sums, the current tile size."""

    def __init__(
        self,
        model: TileModel,
        image: np.ndarray,
        tile: int,
        overlap: int,
        should_stop: ShouldStop | None,
    ) -> None:
        self.model = model
        self.image = image
        self.height, self.width = image.shape[:2]
        self.scale = model.scale
        self.overlap = max(overlap, 0)
        self.req = model.size_requirements
        self.configured_tile = tile
        self.tile = initial_tile(self.width, self.height, model.tiling, self.req, tile, self.overlap)
        self.should_stop = should_stop
        channels = model.output_channels
        self.result = np.empty((self.height * self.scale, self.width * self.scale, channels), dtype=np.uint8)
        self.blend: _Blend | None = None

    def run(self, on_tile: OnTile | None) -> np.ndarray:
        while True:
            try:
                return self._run_grid(on_tile)
            except _Regrid:
                continue  # the whole image did not fit: start over with a grid of smaller tiles

    @torch.inference_mode()
    def _run_grid(self, on_tile: OnTile | None) -> np.ndarray:
        xs, tile_w = tile_starts(self.width, self.tile, self.overlap, self.req.multiple_of)
        ys, tile_h = tile_starts(self.height, self.tile, self.overlap, self.req.multiple_of)
        total, done, s = len(xs) * len(ys), 0, self.scale
        self.blend = None
        if total > 1:  # a single tile is the whole image, written out directly; a grid blends
            carry = tile_h - min((b - a for a, b in zip(ys, ys[1:])), default=tile_h)
            self.blend = _Blend(self.result, tile_w * s, tile_h * s, carry * s, self.model.device)
        for row, y in enumerate(ys):
            bottom = (ys[row + 1] if row + 1 < len(ys) else self.height) * s
            if self.blend is not None:
                self.blend.start_row(y * s)
            for column, x in enumerate(xs):
                self._check_stop()
                if self.blend is not None:
                    self.blend.start_tile(x * s)
                self._region(x, y, tile_w, tile_h)
                if self.blend is not None:
                    right = (xs[column + 1] if column + 1 < len(xs) else self.width) * s
                    self.blend.finish_tile(right, bottom)
                done += 1
                if on_tile is not None:
                    on_tile(done, total)
        self.blend = None
        return self.result

    def _check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Interrupted("upscaling was interrupted")

    def _region(self, x: int, y: int, w: int, h: int) -> None:
        """Upscale input [x, x+w) x [y, y+h), splitting it into smaller tiles after an OOM."""
        if self.tile is None or (w <= self.tile and h <= self.tile):
            failure = self._try_tile(x, y, w, h)
            if failure is None:
                return
            self._shrink(max(w, h), failure)
            if (x, y, w, h) == (0, 0, self.width, self.height):
                raise _Regrid
        sub_xs, sub_w = tile_starts(w, self.tile, self.overlap, self.req.multiple_of)
        sub_ys, sub_h = tile_starts(h, self.tile, self.overlap, self.req.multiple_of)
        for sy in sub_ys:
            for sx in sub_xs:
                self._check_stop()
                self._region(x + sx, y + sy, sub_w, sub_h)

    def _shrink(self, failed: int, detail: str) -> None:
        if self.model.tiling == "internal":
            raise DeviceOutOfMemory(failed, detail + " (this model must not be tiled)")
        size = failed // 2
        if 0 < self.configured_tile < failed:
            size = min(size, self.configured_tile)
        size -= size % self.req.multiple_of
        smallest = min_tile(self.overlap, self.req)
        if failed <= smallest:
            raise DeviceOutOfMemory(failed, detail)
        self.tile = max(size, smallest)

    def _try_tile(self, x: int, y: int, w: int, h: int) -> str | None:
        """Run one tile and accumulate it; on out-of-memory return the error's first line."""
        try:
            out = self._infer(x, y, w, h)
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        else:
            self._accumulate(out, x, y, w, h)
            return None
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()
        return detail

    @torch.inference_mode()
    def _infer(self, x: int, y: int, w: int, h: int) -> torch.Tensor:
        """The model's (C, h*s, w*s) float32 output for one input region, on the device."""
        patch = np.array(self.image[y : y + h, x : x + w], copy=True)
        t = torch.from_numpy(patch).to(self.model.device).permute(2, 0, 1).unsqueeze(0)
        t = t.to(self.model.dtype).div_(255)
        padded_w, padded_h = self.req.padded(w, h)
        if (padded_w, padded_h) != (w, h):
            t = _pad(t, padded_w - w, padded_h - h)
        out = self.model(t)[0, :, : h * self.scale, : w * self.scale]
        return torch.nan_to_num(out.float(), nan=0.0).clamp_(0, 1)

    @torch.inference_mode()
    def _accumulate(self, out: torch.Tensor, x: int, y: int, w: int, h: int) -> None:
        """Add a tile's weighted output to the blend sums (or store it: the untiled case)."""
        s = self.scale
        if self.blend is None:  # the whole image in one tile: nothing to blend
            _store(self.result, 0, 0, out)
            return
        device = self.blend.sums.device
        wy = torch.from_numpy(_edge_weights(y, h, self.height, self.overlap, s)).to(device)
        wx = torch.from_numpy(_edge_weights(x, w, self.width, self.overlap, s)).to(device)
        self.blend.add(out, wy[:, None] * wx[None, :], y * s, x * s)
