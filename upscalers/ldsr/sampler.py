"""LDSR's sampling as A1111 runs it: DDIM with eta 1 over the UNet applied to overlapping latent tiles, then
the first stage decoding overlapping tiles; memory is bounded by the tile size, not the image's.

A1111 always takes its "split input" path (its padding makes every input at least 128 latent pixels a side):
the UNet sees 128x128 latent tiles at a stride of 64, the decoder 128x128 latent tiles (512x512 pixels) at
a stride of 64 latents, and each tile's output is weighted by its normalised distance to the tile's border,
clipped to [0.01, 0.5], the weighted sums divided by the summed weights.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import Interrupted
from .checkpoint import SCALE, LdsrModel

TILE = 128
"""Latent tile side (A1111's `ks`)."""
STRIDE = 64
"""Latent tile stride (A1111's `stride`)."""
ETA = 1.0
"""A1111's LDSR samples with DDIM eta 1."""
CLIP_MIN_WEIGHT = 0.01
CLIP_MAX_WEIGHT = 0.5


@dataclass(frozen=True)
class DdimStep:
    timestep: int
    alpha: float
    alpha_prev: float
    sigma: float


def ddim_steps(alphas_cumprod: torch.Tensor, steps: int, eta: float = ETA) -> list[DdimStep]:
    """The sampling steps, noisiest first: CompVis' "uniform" DDIM timesteps (every T // steps from 1; this
    can be one more than `steps`, as there) with their cumulative alphas and eta-scaled sigmas."""
    total = alphas_cumprod.numel()
    if not 1 <= steps <= total:
        raise ValueError(f"steps must be between 1 and {total}, got {steps}")
    # the model's float32 buffer, as the original samples with
    acp = alphas_cumprod.to(torch.float32).to(torch.float64)
    timesteps = [t + 1 for t in range(0, total, total // steps) if t + 1 < total]
    out: list[DdimStep] = []
    for i, t in enumerate(timesteps):
        a = float(acp[t])
        a_prev = float(acp[timesteps[i - 1]]) if i else float(acp[0])
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        out.append(DdimStep(t, a, a_prev, sigma))
    return out[::-1]


def border_weight(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(height, width) weights: the distance to the nearest border (0 at it, 0.5 in the middle) clipped."""
    y = torch.arange(height, device=device, dtype=torch.float32)[:, None] / (height - 1)
    x = torch.arange(width, device=device, dtype=torch.float32)[None, :] / (width - 1)
    edge = torch.minimum(torch.minimum(y, x), torch.minimum(1 - y, 1 - x))
    return edge.clamp(CLIP_MIN_WEIGHT, CLIP_MAX_WEIGHT)


def tile_origins(length: int) -> list[int]:
    """Tile starts along one side of `length` latents (a multiple of STRIDE, at least TILE)."""
    return list(range(0, length - TILE + 1, STRIDE))


def tile_count(height: int, width: int) -> int:
    return len(tile_origins(height)) * len(tile_origins(width))


def _tiled(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], up: int) -> torch.Tensor:
    """`fn` over TILE-sized tiles of `x` (B, C, H, W), outputs `up` times larger blended by border weight."""
    b, _, h, w = x.shape
    weight = border_weight(TILE * up, TILE * up, x.device)
    out: torch.Tensor | None = None
    norm = torch.zeros(h * up, w * up, device=x.device, dtype=torch.float32)
    for top in tile_origins(h):
        for left in tile_origins(w):
            y = fn(x[:, :, top:top + TILE, left:left + TILE])
            if out is None:
                out = torch.zeros(b, y.shape[1], h * up, w * up, device=x.device, dtype=y.dtype)
            rows = slice(top * up, (top + TILE) * up)
            cols = slice(left * up, (left + TILE) * up)
            out[:, :, rows, cols] += y * weight
            norm[rows, cols] += weight
    assert out is not None
    return out / norm


@torch.inference_mode()
def sample(
    model: LdsrModel,
    low_res: torch.Tensor,
    steps: int,
    generator: torch.Generator,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """`low_res` (1, 3, H, W) in [-1, 1], H and W multiples of STRIDE and at least TILE, on the model's device
    -> the decoded (1, 3, 4H, 4W) image in about [-1, 1]. Noise comes from `generator` (a CPU generator, so
    that a seed gives the same image on every device). `should_stop()` is polled before each step (raising
    Interrupted); `on_step(done, total)` follows the steps."""
    device = low_res.device
    _, _, h, w = low_res.shape
    if h < TILE or w < TILE or h % STRIDE or w % STRIDE:
        raise ValueError(f"the padded input must be multiples of {STRIDE} of at least {TILE}, got {w}x{h}")
    schedule = ddim_steps(model.alphas_cumprod, steps)
    shape = (1, model.latent_channels, h, w)

    def noise() -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)

    x = noise()
    cond = low_res.to(torch.float32)
    for done, step in enumerate(schedule):
        if should_stop is not None and should_stop():
            raise Interrupted("LDSR was interrupted")
        t = torch.full((1,), step.timestep, device=device, dtype=torch.long)
        both = torch.cat([x, cond], dim=1)
        eps = _tiled(both, lambda tile: model.unet(tile, t), 1)
        pred_x0 = (x - (1 - step.alpha) ** 0.5 * eps) / step.alpha**0.5
        direction = (1 - step.alpha_prev - step.sigma**2) ** 0.5 * eps
        x = step.alpha_prev**0.5 * pred_x0 + direction + step.sigma * noise()
        if on_step is not None:
            on_step(done + 1, len(schedule))
    if should_stop is not None and should_stop():
        raise Interrupted("LDSR was interrupted")
    return _tiled(x, model.first_stage, SCALE)
