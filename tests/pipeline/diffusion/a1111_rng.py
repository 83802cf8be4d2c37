"""A1111's noise rules written out for the tests, independently of pipeline/diffusion/seeds.py and philox.py.

- Philox4x32-10 on plain Python integers, from the Random123 paper's definition (Salmon et al., SC'11):
  a round maps (c0, c1, c2, c3) under key (k0, k1) to (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1,
  lo(M0 c0)); the key is bumped by (W0, W1) between rounds;
- A1111's `rng_philox.Generator`: sample i of draw `offset` is the first Box-Muller output of Philox words
  (a, b) at counter (offset, 0, i, 0), key (seed low, seed high), u = a 2^-32 + 2^-33, v = (b 2^-32 + 2^-33)
  times float32(2^-32 * 2pi); float64 maths, one rounding to float32;
- A1111's `ImageRNG`: per image a generator seeded with the image's seed; its first draw is the initial
  noise, the sampler's `randn_like` draws continue it, or with ENSD continue a generator seeded with
  seed + ENSD."""
from __future__ import annotations

import math
import struct

import numpy as np
import torch

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK = 0xFFFFFFFF


def philox_words(counter: tuple[int, int, int, int], key: tuple[int, int], rounds: int = 10) -> tuple[int, ...]:
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK, (p0 >> 32) ^ c3 ^ k1, p0 & MASK
    return c0, c1, c2, c3


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def nv_sample(seed: int, offset: int, index: int) -> float:
    a, b, _, _ = philox_words((offset, 0, index, 0), (seed & MASK, seed >> 32))
    inv = _f32(2.3283064e-10)
    inv_2pi = _f32(2.3283064e-10 * 6.2831855)
    u = a * inv + inv / 2
    v = b * inv_2pi + inv_2pi / 2
    return _f32(math.sqrt(-2.0 * math.log(u)) * math.sin(v))


class NVReference:
    def __init__(self, seed: int) -> None:
        self.seed, self.offset = seed, 0

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        n = math.prod(shape)
        out = np.array([nv_sample(self.seed, self.offset, i) for i in range(n)], dtype=np.float32)
        self.offset += 1
        return torch.from_numpy(out.reshape(shape))


class CPUReference:
    def __init__(self, seed: int) -> None:
        self.g = torch.Generator("cpu").manual_seed(seed)

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.g)


def generator(source: str, seed: int):
    return NVReference(seed) if source == "NV" else CPUReference(seed)


def slerp_a1111(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's rng.slerp on one image's (C, H, W) noise: normalised along dim 1, so every (channel, column)
    vector of H values is interpolated on its own; above a mean cosine of 0.9995 A1111 returns
    low * val + high * (1 - val) (the weights swapped, as written there)."""
    a = low / low.norm(dim=1, keepdim=True)
    b = high / high.norm(dim=1, keepdim=True)
    dot = (a * b).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


class ImageRNGReference:
    """noise(): the initial noise (B, C, h, w); then calling the object gives the sampler's draws."""

    def __init__(self, source: str, shape: tuple[int, int, int], seeds: list[int], ensd: int = 0,
                 subseeds: list[int] | None = None, subseed_strength: float = 0.0) -> None:
        self.source, self.shape, self.seeds, self.ensd = source, shape, seeds, ensd
        self.subseeds, self.strength = subseeds, subseed_strength
        self.gens = [generator(source, s) for s in seeds]

    def noise(self) -> torch.Tensor:
        x = torch.stack([g.randn(self.shape) for g in self.gens])
        if self.subseeds is not None and self.strength:
            x = torch.stack([slerp_a1111(self.strength, one, generator(self.source, sub).randn(self.shape))
                             for one, sub in zip(x, self.subseeds, strict=True)])
        if self.ensd:
            self.gens = [generator(self.source, s + self.ensd) for s in self.seeds]
        return x

    def __call__(self, *_sigmas) -> torch.Tensor:  # k-diffusion's noise_sampler(sigma, sigma_next)
        return torch.stack([g.randn(self.shape) for g in self.gens])
