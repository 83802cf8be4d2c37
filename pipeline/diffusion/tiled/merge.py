"""The tiled model call: each window of the latent goes through the guided model (CFG included) on its
own, and the outputs are merged with per-tile weights, normalised by their per-pixel sum."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .plan import Window, plan_windows

MULTIDIFFUSION = "MultiDiffusion"
MIXTURE = "Mixture of Diffusers"
METHODS = (MULTIDIFFUSION, MIXTURE)


@dataclass(frozen=True)
class TileSettings:
    """Tile size and overlap in latent cells (8 px each), tiles per model call, and the merge method."""

    method: str = MIXTURE
    tile_width: int = 96
    tile_height: int = 96
    overlap: int = 8
    batch: int = 4

    def windows(self, latent_h: int, latent_w: int) -> list[Window]:
        return plan_windows(latent_h, latent_w, self.tile_height, self.tile_width, self.overlap)


def _gaussian(n: int) -> torch.Tensor:
    """Mixture of Diffusers' weight along one side: a Gaussian over the tile with variance 0.01 of its
    (normalised) length, centred."""
    pos = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) / n
    return torch.exp(-pos * pos / (2 * 0.01)) / math.sqrt(2 * math.pi * 0.01)


def tile_weight(method: str, h: int, w: int) -> torch.Tensor:
    if method == MULTIDIFFUSION:
        return torch.ones(h, w, dtype=torch.float32)
    return torch.outer(_gaussian(h), _gaussian(w)).float()


def _repeat(cond: Any, k: int) -> Any:
    if k == 1:
        return cond
    pooled = None if cond.pooled is None else cond.pooled.repeat(k, 1)
    return type(cond)(cond.context.repeat(k, 1, 1), pooled)


TileProgress = Callable[[int, int], None]


class TiledGuidance:
    """Wraps `guided(x_in, t, cond, uncond)` (sampling.guided_model): the same call over latent tiles,
    `settings.batch` tiles per UNet batch, merged. `last_uncond` (DDIM CFG++) and `parts` (the negative
    prompt's and the prompt's outputs, for live previews) are merged the same way.
    `on_tiles(done, total)` runs after every tile batch: it reports progress and may raise (interrupt,
    skip) to stop inside a model call."""

    def __init__(self, guided: Callable[..., torch.Tensor], settings: TileSettings, latent_h: int, latent_w: int,
                 on_tiles: TileProgress | None = None):
        self.guided = guided
        self.on_tiles = on_tiles
        self.settings = settings
        self.windows = settings.windows(latent_h, latent_w)
        self.weight = tile_weight(settings.method, self.windows[0].h, self.windows[0].w)
        total = torch.zeros(latent_h, latent_w)
        for win in self.windows:
            total[win.y:win.y + win.h, win.x:win.x + win.w] += self.weight
        self.norm = total
        self.last_uncond: torch.Tensor | None = None
        self.parts: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)  # merged, as the output

    def __call__(self, x_in: torch.Tensor, t: Any, cond: Any, uncond: Any) -> torch.Tensor:
        b = x_in.shape[0]
        out = torch.zeros(x_in.shape, dtype=torch.float32, device=x_in.device)
        unc = None
        parts: list[torch.Tensor | None] = [None, None]
        w = self.weight.to(x_in.device)
        for start in range(0, len(self.windows), self.settings.batch):
            group = self.windows[start:start + self.settings.batch]
            k = len(group)
            tiles = torch.cat([x_in[:, :, g.y:g.y + g.h, g.x:g.x + g.w] for g in group])
            res = self.guided(tiles, t, _repeat(cond, k), _repeat(uncond, k)).float()
            last = getattr(self.guided, "last_uncond", None)
            if last is not None and unc is None:
                unc = torch.zeros_like(out)
            tile_parts = getattr(self.guided, "parts", (None, None))
            for n, part in enumerate(tile_parts):
                if part is not None and parts[n] is None:
                    parts[n] = torch.zeros_like(out)
            for j, g in enumerate(group):
                out[:, :, g.y:g.y + g.h, g.x:g.x + g.w] += res[j * b:(j + 1) * b] * w
                if last is not None:
                    unc[:, :, g.y:g.y + g.h, g.x:g.x + g.w] += last[j * b:(j + 1) * b].float() * w
                for n, part in enumerate(tile_parts):
                    if part is not None:
                        parts[n][:, :, g.y:g.y + g.h, g.x:g.x + g.w] += part[j * b:(j + 1) * b].float() * w
            if self.on_tiles is not None:
                self.on_tiles(start + k, len(self.windows))
        norm = self.norm.to(x_in.device)
        self.last_uncond = None if unc is None else unc / norm
        self.parts = tuple(None if p is None else p / norm for p in parts)
        return out / norm
