"""The 8-bit conversion after the VAE gives A1111's truncated pixels on either path: the on-device one (used
on GPUs, run here on the CPU tensor) equals numpy's, at every level boundary and from bf16 input too."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.models.vae_codec import _to_uint8_on_device, to_images


def _numpy_reference(x: torch.Tensor) -> np.ndarray:
    return (x.float().clamp(0, 1).permute(0, 2, 3, 1).numpy() * np.float32(255.0)).astype(np.uint8)


def test_device_conversion_equals_numpy_truncation() -> None:
    levels = torch.arange(256, dtype=torch.float32) / 255
    up, down = torch.nextafter(levels, torch.tensor(2.0)), torch.nextafter(levels, torch.tensor(-1.0))
    edges = torch.cat([levels, up, down, torch.tensor([-0.5, 1.5, 0.0, 1.0, 0.5, 0.999])])
    x = torch.cat([edges, torch.rand(3 * 64 * 8 - edges.numel(), generator=torch.Generator().manual_seed(0))])
    x = x.reshape(1, 3, 64, 8)
    for t in (x, x.bfloat16()):
        want = _numpy_reference(t)
        assert np.array_equal(_to_uint8_on_device(t.float().clamp(0, 1)), want)
        assert np.array_equal(np.stack([np.asarray(i) for i in to_images(t)]), want)
