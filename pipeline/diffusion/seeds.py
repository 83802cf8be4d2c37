"""Seeded noise, as A1111 v1.10 draws it: per-image seeds, variation seeds, "resize seed from", the noise
source (`randn_source`) and the eta noise seed delta (ENSD).

A pass draws all its noise from one `ImageNoise` (A1111's `ImageRNG`): one generator per image, seeded
with the image's seed. The pass's initial noise is each generator's first draw; every later draw of a
sampler (ancestral steps, churn, DDIM eta, LCM: A1111's `randn_like`) continues the same generators, or,
with a nonzero ENSD, fresh generators seeded with seed + ENSD. Where the generators live:

    GPU   the sampling device's own generator (A1111's default; on the CPU, the CPU's)
    CPU   the CPU's generator, whatever the sampling device
    NV    Philox4x32-10 + Box-Muller computed on the CPU (philox.py): NVIDIA's numbers on any device

So `CPU` gives the same noise on every machine, `NV` gives on every machine what `GPU` gives on an NVIDIA
card, and `GPU` on a CPU server is `CPU`."""
from __future__ import annotations

import random
from typing import Protocol

import torch
from diffusers.utils.torch_utils import randn_tensor

from pipeline.diffusion.philox import PhiloxGenerator

MAX_SEED = 4294967294  # a random seed is drawn from [0, MAX_SEED), as A1111 draws it
# what torch's `manual_seed` accepts (A1111 hands a request's seed to it as is): -2^63 .. 2^64 - 1
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
_U64 = 2**64 - 1
RANDN_SOURCES = ("GPU", "CPU", "NV")


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
    """A1111's variation-seed interpolation of one image's (C, H, W) noise: spherical, separately for every
    (channel, column) vector of H values (A1111 normalises along dim 1). When the two are almost parallel on
    average (mean cosine above 0.9995), A1111's linear fallback, whose weights are `t` on `low` and 1 - t
    on `high` as A1111 writes it."""
    cos = ((low / low.norm(dim=1, keepdim=True)) * (high / high.norm(dim=1, keepdim=True))).sum(1)
    if cos.mean() > 0.9995:
        return low * t + high * (1 - t)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    w_low = (torch.sin((1.0 - t) * omega) / sin).unsqueeze(1)
    w_high = (torch.sin(t * omega) / sin).unsqueeze(1)
    return w_low * low + w_high * high


class Draws(Protocol):
    """A seeded stream of standard-normal float32 tensors."""

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor: ...


class TorchDraws:
    """A torch generator on `device` (the CPU's Mersenne twister, CUDA's Philox, ...)."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        self.generator = torch.Generator(device).manual_seed(torch_seed(seed))

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=torch.float32)


def source_device(source: str, device: torch.device | str) -> torch.device:
    """Where a torch-generated source draws: CPU for `CPU` (and on Apple's MPS, as A1111), else `device`."""
    device = torch.device(device)
    return torch.device("cpu") if source == "CPU" or device.type == "mps" else device


def make_draws(source: str, seed: int, device: torch.device | str) -> Draws:
    if source not in RANDN_SOURCES:
        raise ValueError(f"randn_source must be one of {', '.join(RANDN_SOURCES)}, got {source!r}")
    if source == "NV":
        return PhiloxGenerator(seed)
    return TorchDraws(seed, source_device(source, device))


class ImageNoise:
    """A1111's ImageRNG for one pass: `first()` the batch's initial noise (B, C, h, w), then `next()` the
    sampler's further draws, each (B, C, h, w) on `device` in float32."""

    def __init__(self, shape: tuple[int, int, int], seeds: list[int], subseeds: list[int] | None = None,
                 subseed_strength: float = 0.0, seed_resize_from: tuple[int, int] = (-1, -1), *,
                 source: str = "GPU", device: torch.device | str = "cpu", ensd: int = 0) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.seeds = [int(s) for s in seeds]
        self.subseeds = subseeds
        self.subseed_strength = float(subseed_strength)
        self.seed_resize_from = seed_resize_from
        self.source = source
        self.device = torch.device(device)
        self.ensd = int(ensd or 0)
        self.generators = [make_draws(source, s, self.device) for s in self.seeds]
        self.drawn = 0

    def _fresh(self, seed: int, shape: tuple[int, ...]) -> torch.Tensor:
        return make_draws(self.source, seed, self.device).randn(shape)

    def first(self) -> torch.Tensor:
        c, h, w = self.shape
        rw, rh = self.seed_resize_from
        noise_shape = self.shape if rw <= 0 or rh <= 0 else (c, rh // 8, rw // 8)
        out = []
        for i, (seed, gen) in enumerate(zip(self.seeds, self.generators, strict=True)):
            noise = gen.randn(self.shape) if noise_shape == self.shape else self._fresh(seed, noise_shape)
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                noise = slerp(self.subseed_strength, noise, self._fresh(subseed, noise_shape).to(noise.device))
            if noise_shape != self.shape:
                full = gen.randn(self.shape).to(noise.device)
                dx, dy = (w - noise_shape[2]) // 2, (h - noise_shape[1]) // 2
                cw, ch = min(noise_shape[2], w), min(noise_shape[1], h)
                tx, ty = max(dx, 0), max(dy, 0)
                sx, sy = max(-dx, 0), max(-dy, 0)
                full[:, ty:ty + ch, tx:tx + cw] = noise[:, sy:sy + ch, sx:sx + cw]
                noise = full
            out.append(noise.to(self.device))
        if self.ensd:  # the sampler's own draws come from seed + ENSD from here on
            self.generators = [make_draws(self.source, s + self.ensd, self.device) for s in self.seeds]
        self.drawn = 1
        return torch.stack(out)

    def next(self) -> torch.Tensor:
        if self.drawn == 0:
            return self.first()
        self.drawn += 1
        return torch.stack([g.randn(self.shape).to(self.device) for g in self.generators])


def step_noise(source: ImageNoise | list[torch.Generator] | None, shape: tuple[int, ...],
               device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """A sampler's fresh noise (A1111's `randn_like`): the pass's next draw, or (a list of torch
    generators, for direct callers) diffusers' per-image draw."""
    if isinstance(source, ImageNoise):
        x = source.next()
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"the sampler asks for noise {tuple(shape)}, the pass draws {tuple(x.shape)}")
        return x.to(device, dtype)
    return randn_tensor(tuple(shape), generator=source, device=torch.device(device), dtype=dtype)


def image_noise(shape: tuple[int, int, int], seed: int, subseed: int = -1, subseed_strength: float = 0.0,
                seed_resize_from: tuple[int, int] = (-1, -1), *, source: str = "CPU",
                device: torch.device | str = "cpu") -> torch.Tensor:
    """The initial noise (C, h, w) of one image."""
    rng = ImageNoise(shape, [seed], [subseed], subseed_strength, seed_resize_from, source=source, device=device)
    return rng.first()[0]


def randn_source(options: dict) -> str:
    """The job's noise source: the option `randn_source` (A1111's default `GPU`)."""
    value = options.get("randn_source") or "GPU"
    if value not in RANDN_SOURCES:
        raise ValueError(f"randn_source must be one of {', '.join(RANDN_SOURCES)}, got {value!r}")
    return value


def eta_noise_seed_delta(options: dict) -> int:
    """The option `eta_noise_seed_delta` (ENSD; 0: the sampler's draws continue the seed's generators)."""
    return int(options.get("eta_noise_seed_delta") or 0)
