"""A1111's built-in "SD upscale" img2img script (`script_name: "sd upscale"`).

`script_args` = [info (ignored), overlap px (64), upscaler (index into /sdapi/v1/upscalers or a name; 0 =
"None"), scale factor (2.0)]. The first init image is upscaled (upscaler "None": left at its size), cut
into tiles of the request's width x height that overlap by at least `overlap` (evenly spaced, the last
one snapped to the edge), each tile is a normal img2img of `batch_size` tiles per call, and the tiles are
joined with a linear feather over `overlap` pixels, row by row, then row over row. Upscale n of `n_iter`
starts at seed + n and every tile batch at the previous batch's first seed + 1 (batch_size 1: tile i has
seed + n + i). One full-size image per `n_iter`; every infotext is the first tile batch's."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pipeline.diffusion.seeds import wrap_seed
from pipeline.diffusion.tiled.plan import grid_positions
from pipeline.jobs import script_args
from pipeline.jobs.common import JobContext, JobResult
from pipeline.jobs.img2img.prepare import Img2ImgProcessing
from pipeline.jobs.img2img.run import flatten_init, img2img_batches
from pipeline.jobs.processing import check_pixel_budget
from pipeline.runtime.errors import InvalidRequest

NAME = "sd upscale"
DEFAULTS = ("", 64, 0, 2.0)


@dataclass(frozen=True)
class Grid:
    """Tile positions: `rows` is [(y, [x, ...]), ...] for tiles of tile_w x tile_h over width x height."""

    tile_w: int
    tile_h: int
    width: int
    height: int
    overlap: int
    rows: list[tuple[int, list[int]]]

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        return [(x, y, x + self.tile_w, y + self.tile_h) for y, xs in self.rows for x in xs]


def split_grid(width: int, height: int, tile_w: int, tile_h: int, overlap: int) -> Grid:
    xs = grid_positions(width, tile_w, overlap)
    return Grid(tile_w, tile_h, width, height, overlap, [(y, xs) for y in grid_positions(height, tile_h, overlap)])


def _ramp(length: int, across: int, horizontal: bool) -> Image.Image:
    r = (np.arange(length, dtype=np.float32) * 255 / length).astype(np.uint8)
    arr = np.tile(r[None, :], (across, 1)) if horizontal else np.tile(r[:, None], (1, across))
    return Image.fromarray(arr, "L")


def combine(grid: Grid, tiles: list[Image.Image]) -> Image.Image:
    """Join the tiles (in `grid.boxes` order): within a row each tile after the first blends its first
    `overlap` columns in through a 0 -> 255 ramp; rows are joined the same way vertically."""
    ov = grid.overlap
    out = Image.new("RGB", (grid.width, grid.height))
    it = iter(tiles)
    for y, xs in grid.rows:
        row = Image.new("RGB", (grid.width, grid.tile_h))
        for x in xs:
            tile = next(it)
            if x == 0 or ov == 0:
                row.paste(tile, (x, 0))
                continue
            row.paste(tile.crop((0, 0, ov, grid.tile_h)), (x, 0), _ramp(ov, grid.tile_h, True))
            row.paste(tile.crop((ov, 0, grid.tile_w, grid.tile_h)), (x + ov, 0))
        if y == 0 or ov == 0:
            out.paste(row, (0, y))
            continue
        out.paste(row.crop((0, 0, grid.width, ov)), (0, y), _ramp(ov, grid.width, False))
        out.paste(row.crop((0, ov, grid.width, grid.tile_h)), (0, y + ov))
    return out


@dataclass(frozen=True)
class SDUpscale:
    """The parsed script arguments; `run(p, ctx)` is the job."""

    overlap: int
    upscaler: str
    scale: float

    @classmethod
    def parse(cls, args: list[Any], upscaler_names: list[str], resolve: Any) -> SDUpscale:
        """A1111's arguments, missing trailing ones taking the defaults. `resolve(name)` -> canonical name."""
        if len(args) > len(DEFAULTS):
            raise InvalidRequest("script_args", f"'sd upscale' takes {len(DEFAULTS)} arguments [info, overlap, "
                                 f"upscaler, scale_factor], got {len(args)}")
        _info, overlap, upscaler, scale = list(args) + list(DEFAULTS[len(args):])
        if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or overlap != int(overlap) \
                or not 0 <= overlap <= 2048:
            raise InvalidRequest("script_args[1]", f"overlap must be a whole number of pixels from 0 to 2048, "
                                 f"got {overlap!r}")
        name = script_args.upscaler(upscaler, 2, "upscaler", upscaler_names, resolve)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 1.0 <= float(scale) <= 8.0:
            raise InvalidRequest("script_args[3]", f"scale_factor must be a number from 1 to 8, got {scale!r}")
        return cls(int(overlap), name, float(scale))

    def check(self, p: Any) -> None:
        """Before the job is queued: a tile must be larger than the overlap."""
        if self.overlap >= min(p.width, p.height):
            raise InvalidRequest("script_args[1]", f"overlap {self.overlap} must be smaller than the tile "
                                 f"({p.width}x{p.height}, the request's width x height)")

    def target_size(self, w: int, h: int) -> tuple[int, int]:
        if self.upscaler == "None":
            return w, h
        return int(w * self.scale) // 8 * 8, int(h * self.scale) // 8 * 8

    def prepare(self, p: Img2ImgProcessing, init_w: int, init_h: int, max_pixels: int) -> None:
        """Before the job is queued: the tiles and the upscaled image within bounds."""
        self.check(p)
        tw, th = self.target_size(init_w, init_h)
        check_pixel_budget(tw, th, 1, max_pixels, "the scale_factor or the init image")

    def run(self, p: Img2ImgProcessing, ctx: JobContext) -> JobResult:
        state = ctx.state
        source = flatten_init(p, p.init_images[0])
        tw, th = self.target_size(source.width, source.height)
        if (tw, th) != source.size:
            source = ctx.upscaler.upscale_to(source, self.upscaler, tw, th,
                                             lambda: state.interrupted or state.skipped)
        grid = split_grid(source.width, source.height, p.width, p.height, self.overlap)
        boxes = grid.boxes
        bs = p.batch_size
        batches = math.ceil(len(boxes) / bs)
        state.begin("sd upscale", batches * p.n_iter, None)
        p.extra_generation_params["SD upscale overlap"] = self.overlap
        p.extra_generation_params["SD upscale upscaler"] = self.upscaler
        images: list[Image.Image] = []
        first_info: Any = None
        calls: list[int] = []
        for n in range(p.n_iter):
            seed = wrap_seed(p.seed + n)
            tiles: list[Image.Image] = []
            for b in range(batches):
                if state.interrupted:
                    break
                crops = [source.crop(box) for box in boxes[b * bs:(b + 1) * bs]]
                q = dataclasses.replace(p, init_images=crops, batch_size=len(crops), n_iter=1, seed=seed,
                                        script=None, extra_generation_params=dict(p.extra_generation_params),
                                        resize_mode=0, counters={},
                                        control_boxes=(boxes[b * bs:(b + 1) * bs], source.size))
                result = img2img_batches(q, ctx, job_offset=n * batches + b)
                if first_info is None:
                    first_info = result
                calls += result.unet_calls
                tiles += result.images
                seed += 1
            if len(tiles) < len(boxes):  # interrupted: the tiles not redrawn stay as upscaled
                tiles += [source.crop(box) for box in boxes[len(tiles):]]
            images.append(combine(grid, tiles))
            if state.interrupted:
                break
        text = first_info.infotexts[0] if first_info is not None and first_info.infotexts else ""
        info = dict(first_info.info) if first_info is not None else {}
        info["infotexts"] = [text] * len(images)
        return JobResult(images, [text] * len(images), info, calls)


def script_info_args(upscaler_names: list[str]) -> list[dict[str, Any]]:
    """/sdapi/v1/script-info `args`: A1111's controls in script_args order."""
    return [
        {"label": None, "value": "Will upscale the image by the selected scale factor; use width and height "
                                 "sliders to set tile size"},
        {"label": "Tile overlap", "value": 64, "minimum": 0, "maximum": 256, "step": 16},
        {"label": "Upscaler", "value": upscaler_names[0], "choices": list(upscaler_names)},
        {"label": "Scale Factor", "value": 2.0, "minimum": 1.0, "maximum": 4.0, "step": 0.05},
    ]
