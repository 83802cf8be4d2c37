"""Seeded initial noise, A1111-style: per-image seeds, variation seeds and "resize seed from".

Noise is drawn from CPU generators, so a seed gives the same image on any device (A1111's `RNG: CPU`)."""
from __future__ import annotations

import random

import torch

MAX_SEED = 4294967294  # a random seed is drawn from [0, MAX_SEED), as A1111 draws it
# what torch's `manual_seed` accepts (A1111 hands a request's seed to it as is): -2^63 .. 2^64 - 1
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
_U64 = 2**64 - 1


def random_seed() -> int:
    return random.randrange(0, MAX_SEED)


def wrap_seed(seed: int) -> int:
    """A seed derived by adding to a request's (`seed + i` per image, SD upscale's `seed + n`) past 2^64 - 1
    wraps round to 0, as torch reads it modulo 2^64: the same noise, and a value the API accepts again."""
    return int(seed) & _U64 if seed > SEED_MAX else int(seed)


def torch_seed(seed: int) -> int:
    """Any integer seed as torch's unsigned 64-bit seed (a negative one as torch reads it)."""
    return int(seed) & _U64


def resolve_seed(seed: int | None) -> int:
    return random_seed() if seed is None or seed == -1 else int(seed)


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (as flat vectors)."""
    a, b = low.flatten(), high.flatten()
    dot = torch.dot(a / a.norm(), b / b.norm()).clamp(-1.0, 1.0)
    if dot.abs() > 0.9995:
        return low * (1 - t) + high * t
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * low + (torch.sin(t * omega) / so) * high


def _randn(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator("cpu").manual_seed(torch_seed(seed))
    return torch.randn(shape, generator=g, dtype=torch.float32)


def image_noise(shape: tuple[int, int, int], seed: int, subseed: int = -1, subseed_strength: float = 0.0,
                seed_resize_from: tuple[int, int] = (-1, -1)) -> torch.Tensor:
    """Noise (C, h, w) for one image. `seed_resize_from` is (width, height) in pixels, <= 0 disables it."""
    c, h, w = shape
    rw, rh = seed_resize_from
    noise_shape = shape if rw <= 0 or rh <= 0 else (c, rh // 8, rw // 8)
    noise = _randn(seed, noise_shape)
    if subseed_strength > 0:
        noise = slerp(subseed_strength, noise, _randn(subseed, noise_shape))
    if noise_shape != shape:
        full = _randn(seed, shape)
        dx, dy = (w - noise_shape[2]) // 2, (h - noise_shape[1]) // 2
        cw, ch = min(noise_shape[2], w), min(noise_shape[1], h)
        tx, ty = max(dx, 0), max(dy, 0)
        sx, sy = max(-dx, 0), max(-dy, 0)
        full[:, ty:ty + ch, tx:tx + cw] = noise[:, sy:sy + ch, sx:sx + cw]
        noise = full
    return noise


def batch_noise(shape: tuple[int, int, int], seeds: list[int], subseeds: list[int], subseed_strength: float,
                seed_resize_from: tuple[int, int]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Noise (B, C, h, w) for a batch plus one CPU generator per image for the sampler's own noise draws
    (ancestral and SDE samplers), seeded from the image's seed so every draw is reproducible."""
    noise = torch.stack([image_noise(shape, s, ss, subseed_strength, seed_resize_from)
                         for s, ss in zip(seeds, subseeds, strict=True)])
    gens = [torch.Generator("cpu").manual_seed(torch_seed(int(s) + 1)) for s in seeds]
    return noise, gens
