"""Cost of one noise draw per source (randn_source GPU/CPU/NV), side by side in one run.

NV computes Philox4x32-10 + Box-Muller in numpy on the CPU (pipeline/diffusion/philox.py); CPU is torch's
generator. An ancestral sampler draws once per step per image, so the ratio says what NV adds to a job.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.bench_noise_sources
"""
from __future__ import annotations

import time

import torch

from pipeline.diffusion.seeds import ImageNoise

SHAPES = {"SD1 512x512": (4, 64, 64), "SDXL 1024x1024": (4, 128, 128), "hires 2048x2048": (4, 256, 256)}
REPEAT = 20


def per_draw(source: str, shape: tuple[int, int, int]) -> float:
    rng = ImageNoise(shape, [1234], source=source, device="cpu")
    rng.first()
    start = time.perf_counter()
    for _ in range(REPEAT):
        rng.next()
    return (time.perf_counter() - start) / REPEAT


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"{'latent':<18} {'CPU ms':>8} {'NV ms':>8} {'NV/CPU':>7}")
    for name, shape in SHAPES.items():
        cpu, nv = per_draw("CPU", shape), per_draw("NV", shape)
        print(f"{name:<18} {cpu * 1e3:8.2f} {nv * 1e3:8.2f} {nv / cpu:7.1f}")


if __name__ == "__main__":
    main()
