"""A1111's `NV` noise: Philox4x32-10 counters turned into normal samples by Box-Muller, on any device.

This is the generator A1111 v1.10 calls `NV` (randn_source): it gives, on a CPU (or any GPU), the numbers
that `torch.randn(..., device="cuda")` gives on an NVIDIA card for the same seed, so a CPU server can
reproduce an image made on NVIDIA hardware. For sample number i of draw number `offset` of a generator
seeded with `seed`:

    counter = (offset, 0, i, 0)                      four 32-bit words
    key     = (seed mod 2^32, seed div 2^32)         two 32-bit words
    (a, b, _, _) = Philox4x32-10(counter, key)       Random123's Philox4x32 with 10 rounds
    u = a * 2^-32 + 2^-33                            in (0, 1)
    v = (b * 2^-32 + 2^-33) * 2 pi                   (the float32 constant 2^-32 * 2pi, as A1111)
    sample = float32(sqrt(-2 ln u) * sin(v))         computed in float64, rounded once

Every draw (`randn`) takes the next offset, whatever its size, so the n-th draw of a shape is fixed by the
seed and n alone. The arithmetic is numpy's: exact integer rounds and one float64 Box-Muller per sample.
"""
from __future__ import annotations

import math

import numpy as np
import torch

PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # the round multipliers
PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # the key schedule's increments (golden ratio, sqrt(3) - 1)
ROUNDS = 10
_MASK32 = np.uint64(0xFFFFFFFF)
# A1111 keeps these two constants in float32: 2^-32 (exact) and 2^-32 * 2pi rounded to float32
_INV32 = float(np.float32(2.3283064e-10))
_INV32_2PI = float(np.float32(2.3283064e-10 * 6.2831855))


def philox4x32(counter: np.ndarray, key: np.ndarray, rounds: int = ROUNDS) -> np.ndarray:
    """Philox4x32-`rounds` of the (4, N) uint32 `counter` words under the (2, N) uint32 `key` words."""
    c = [np.asarray(counter[i], dtype=np.uint64) for i in range(4)]
    k0, k1 = (np.asarray(key[i], dtype=np.uint64) for i in range(2))
    for r in range(rounds):
        if r:
            k0 = (k0 + np.uint64(PHILOX_W[0])) & _MASK32
            k1 = (k1 + np.uint64(PHILOX_W[1])) & _MASK32
        p0 = c[0] * np.uint64(PHILOX_M[0])  # < 2^64: exact in uint64
        p1 = c[2] * np.uint64(PHILOX_M[1])
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & _MASK32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & _MASK32]
    return np.stack(c).astype(np.uint32)


def box_muller(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The first of Box-Muller's two normal samples from two uint32 words each, in float32."""
    u = a.astype(np.float64) * _INV32 + _INV32 / 2
    v = b.astype(np.float64) * _INV32_2PI + _INV32_2PI / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class PhiloxGenerator:
    """A seeded stream of normal draws, as A1111's `rng_philox.Generator`: `randn(shape)` uses one offset."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.offset = 0

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        n = math.prod(int(s) for s in shape)
        if n >= 1 << 32:
            raise ValueError(f"a draw of {n} samples is over the generator's 2^32 per draw")
        counter = np.zeros((4, n), dtype=np.uint32)
        counter[0] = self.offset & 0xFFFFFFFF
        counter[2] = np.arange(n, dtype=np.uint32)
        self.offset += 1
        seed = self.seed % (1 << 64)
        key = np.empty((2, n), dtype=np.uint32)
        key[0], key[1] = seed & 0xFFFFFFFF, seed >> 32
        words = philox4x32(counter, key)
        return torch.from_numpy(box_muller(words[0], words[1]).reshape(tuple(int(s) for s in shape)))
