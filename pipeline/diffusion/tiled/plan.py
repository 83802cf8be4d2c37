"""Tile planning: windows of tile x tile cells that cover a size, overlapping by at least `overlap`, evenly
spaced with the last one on the far edge (the layout of A1111's `split_grid`, used here in latent cells)."""
from __future__ import annotations

import math
from dataclasses import dataclass


def grid_positions(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one axis: ceil((size - overlap) / (tile - overlap)) tiles evenly spaced,
    truncated to whole cells, the last snapped so it ends at `size`. Needs tile > overlap."""
    if tile <= overlap:
        raise ValueError(f"tile {tile} must be larger than the overlap {overlap}")
    if size <= tile:
        return [0]
    n = math.ceil((size - overlap) / (tile - overlap))
    step = (size - tile) / (n - 1) if n > 1 else 0
    return [size - tile if int(i * step) + tile >= size else int(i * step) for i in range(n)]


@dataclass(frozen=True)
class Window:
    """One tile: rows y..y+h, columns x..x+w (latent cells)."""

    y: int
    x: int
    h: int
    w: int


def plan_windows(height: int, width: int, tile_h: int, tile_w: int, overlap: int) -> list[Window]:
    """Windows covering a height x width latent. A tile larger than the latent is clamped to it (one
    window on that axis); the overlap is clamped below the tile."""
    th, tw = min(tile_h, height), min(tile_w, width)
    ov = max(0, min(overlap, min(th, tw) - 1))
    return [Window(y, x, th, tw) for y in grid_positions(height, th, ov) for x in grid_positions(width, tw, ov)]
