"""Hypertile (tfernd/HyperTile, A1111's built-in extension): the self-attention of the UNet's shallow
transformer blocks computed within tiles of the token grid instead of across the whole image.

Each patched attention call splits its (h, w) token grid into nh x nw equal tiles, folds them into the
batch, attends within each tile and puts the tiles back: attention cost falls from (h w)^2 to
(h w)^2 / (nh nw). The tile counts are drawn per call, as A1111 draws them: from the divisors d of the
grid side n with d >= the minimum tile side, the `swap_size` smallest, n // d picked by a `random.Random`
seeded with the job's seed (so a job is reproducible and reproduces A1111's draw sequence). The minimum
tile side is max(128, tile_size) / 8 latent cells times 2^depth, with tile_size the largest power of two
dividing both pixel sides, capped at `max_tile`. Depth is the UNet level: on SD 1.x/2.x down block i and
up block n-1-i are depth i and the mid block depth n-1; on SDXL (A1111's table) the first transformer of
level 1 is depth 0, the rest of level 1 and level 2 depth 1, the mid block depth 2.

Where the call's tokens do not form the grid (token merging has merged them) the attention runs whole.

`vae_hypertile` does the same for the VAE decoder's mid-block attention (A1111's VAE option): its (B, C,
H, W) input split into nh x nw tiles of at least max(128, tile size) / 8 latent cells, for one decode."""
from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.models.patches.layer import UNetPatcher


def largest_tile(width: int, height: int) -> int:
    """The largest power of two dividing both pixel sides."""
    g = math.gcd(width, height)
    return g & -g if g else 1


def tile_count(n: int, min_side: int, options: int, rng: random.Random) -> int:
    """How many tiles along a side of n cells: n // d for one of the `options` smallest divisors d of n with
    d >= min_side (min_side capped at n), drawn by `rng` (A1111's `random_divisor`; 0 options count as 1)."""
    min_side = min(min_side, n)
    divisors = [d for d in range(min_side, n + 1) if n % d == 0][:max(1, options)]
    return n // divisors[rng.randint(0, len(divisors) - 1)]


def token_grid(tokens: int, latent: tuple[int, int]) -> tuple[int, int] | None:
    """The (h, w) grid of `tokens` at some UNet level of a (H, W) latent (each level halves, rounding up),
    None if no level has that many tokens."""
    h, w = latent
    while h >= 1 and w >= 1:
        if h * w == tokens:
            return h, w
        if h * w < tokens or (h == 1 and w == 1):
            return None
        h, w = (h + 1) // 2, (w + 1) // 2
    return None


def to_tiles(x: torch.Tensor, h: int, w: int, nh: int, nw: int) -> torch.Tensor:
    """(B, h*w, C) row-major tokens -> (B*nh*nw, (h/nh)*(w/nw), C), tile-major within each image."""
    b, _, c = x.shape
    th, tw = h // nh, w // nw
    return x.reshape(b, nh, th, nw, tw, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, th * tw, c)


def from_tiles(x: torch.Tensor, h: int, w: int, nh: int, nw: int) -> torch.Tensor:
    """The inverse of `to_tiles`."""
    c = x.shape[-1]
    th, tw = h // nh, w // nw
    b = x.shape[0] // (nh * nw)
    return x.reshape(b, nh, nw, th, tw, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h * w, c)


def _attn1s(attention: Any, first_only: bool) -> Iterator[Any]:
    blocks = attention.transformer_blocks
    for block in blocks[:1] if first_only else blocks:
        yield block.attn1


def attention_depths(unet: Any, family: str) -> list[tuple[Any, int]]:
    """(self-attention module, depth) for every attention Hypertile may tile (A1111's layer tables)."""
    out: list[tuple[Any, int]] = []
    levels = len(unet.down_blocks)
    ups = list(unet.up_blocks)

    def attentions(level: int) -> list[Any]:
        found = list(getattr(unet.down_blocks[level], "attentions", None) or [])
        return found + list(getattr(ups[levels - 1 - level], "attentions", None) or [])

    mid = list(getattr(unet.mid_block, "attentions", None) or [])
    if family == "sdxl":
        for att in attentions(1):
            out += [(m, 0 if i == 0 else 1) for i, m in enumerate(_attn1s(att, False))]
        if levels > 2:
            out += [(m, 1) for att in attentions(2) for m in _attn1s(att, False)]
        out += [(m, 2) for att in mid for m in _attn1s(att, False)]
        return out
    for level in range(levels):
        out += [(m, level) for att in attentions(level) for m in _attn1s(att, True)]
    out += [(m, levels - 1) for att in mid for m in _attn1s(att, True)]
    return out


@dataclass
class Hypertile:
    """The UNet patch: `max_depth` (0-3), `max_tile` (pixels), `swap_size` (how many tile counts to draw
    from), for a pass of `width` x `height` pixels. `tiles` records (nh, nw) of every patched call."""

    width: int
    height: int
    max_depth: int = 3
    max_tile: int = 256
    swap_size: int = 3

    def __post_init__(self) -> None:
        self.tiles: list[tuple[int, int]] = []

    def apply(self, patcher: UNetPatcher) -> None:
        rng = random.Random(patcher.info.seed)  # per model it is applied to: the refiner restarts the draws
        min_tile = max(128, min(largest_tile(self.width, self.height), self.max_tile)) // 8
        for module, depth in attention_depths(patcher.unet, patcher.model.family):
            if depth <= self.max_depth:
                patcher.wrap_forward(module, self._tiled(patcher, rng, min_tile * 2 ** depth))

    def _tiled(self, patcher: UNetPatcher, rng: random.Random, min_side: int) -> Any:
        def forward(original: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            grid = token_grid(hidden_states.shape[1], patcher.call.latent_size) \
                if hidden_states.ndim == 3 and kwargs.get("encoder_hidden_states") is None else None
            if grid is None:
                return original(hidden_states, *args, **kwargs)
            h, w = grid
            nh = tile_count(h, min_side, self.swap_size, rng)
            nw = tile_count(w, min_side, self.swap_size, rng)
            self.tiles.append((nh, nw))
            if nh * nw == 1:
                return original(hidden_states, *args, **kwargs)
            out = original(to_tiles(hidden_states, h, w, nh, nw), *args, **kwargs)
            return from_tiles(out, h, w, nh, nw)

        return forward


@contextlib.contextmanager
def vae_hypertile(vae: Any, width: int, height: int, seed: int, max_tile: int = 128, swap_size: int = 3
                  ) -> Iterator[list[tuple[int, int]]]:
    """The VAE decoder's mid-block attention tiled for the body (a `width` x `height` picture); yields the
    list of (nh, nw) of every call. The module is given back its own forward afterwards."""
    attn = vae.decoder.mid_block.attentions[0]
    rng = random.Random(seed)
    min_side = max(128, min(largest_tile(width, height), max_tile)) // 8
    tiles: list[tuple[int, int]] = []
    had_own, previous = "forward" in attn.__dict__, attn.__dict__.get("forward")
    original = attn.forward

    def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if hidden_states.ndim != 4:
            return original(hidden_states, *args, **kwargs)
        b, c, h, w = hidden_states.shape
        nh, nw = tile_count(h, min_side, swap_size, rng), tile_count(w, min_side, swap_size, rng)
        tiles.append((nh, nw))
        if nh * nw == 1:
            return original(hidden_states, *args, **kwargs)
        x = hidden_states.reshape(b, c, nh, h // nh, nw, w // nw).permute(0, 2, 4, 1, 3, 5)
        out = original(x.reshape(b * nh * nw, c, h // nh, w // nw).contiguous(), *args, **kwargs)
        out = out.reshape(b, nh, nw, c, h // nh, w // nw).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(b, c, h, w)

    attn.forward = forward
    try:
        yield tiles
    finally:
        if had_own:
            attn.forward = previous
        else:
            del attn.forward
