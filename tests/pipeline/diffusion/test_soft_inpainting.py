"""Soft Inpainting's maths against references written out here pixel by pixel from A1111's description
(modules/soft_inpainting.py): the per-step latent blend, the noise-dependent mask, the weighted-percentile
filter and the difference mask of the final composite."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.diffusion.soft_inpainting import (
    SoftInpainting,
    cut_overlay,
    gaussian_kernel,
    smootherstep,
    weighted_percentile_filter,
)


def _blend_reference(init: np.ndarray, x0: np.ndarray, t: np.ndarray, p: float) -> np.ndarray:
    """One latent pixel at a time: lerp the 4-vectors, then give the result the length
    ((1 - t)|init|^p + t|x0|^p)^(1/p)."""
    out = np.zeros_like(x0)
    b, _, h, w = x0.shape
    for n in range(b):
        for y in range(h):
            for x in range(w):
                tt = float(t[n, 0, y, x])
                a, c = init[n, :, y, x].astype(np.float64), x0[n, :, y, x].astype(np.float64)
                lin = a * (1 - tt) + c * tt
                want = ((1 - tt) * np.linalg.norm(a) ** p + tt * np.linalg.norm(c) ** p) ** (1 / p)
                out[n, :, y, x] = lin * want / (np.linalg.norm(lin) + 1e-5)
    return out


def test_blend_matches_the_per_pixel_reference() -> None:
    g = torch.Generator().manual_seed(0)
    init, x0 = torch.randn(2, 4, 5, 6, generator=g), torch.randn(2, 4, 5, 6, generator=g) * 2
    nmask = torch.rand(2, 1, 5, 6, generator=g)
    soft = SoftInpainting(schedule_bias=1.3, preservation_strength=0.7, transition_contrast_boost=3.0)
    t = soft.step_mask(nmask, 2.5)
    assert torch.allclose(t, nmask ** (2.5 ** 1.3 * 0.7))
    got = soft.blend(init, x0, t).numpy()
    ref = _blend_reference(init.numpy(), x0.numpy(), t.numpy(), 3.0)
    assert np.allclose(got, ref, atol=1e-5)
    # t = 0 keeps the init latent, t = 1 the denoised one (up to the 1e-5 guard)
    assert torch.allclose(soft.blend(init, x0, torch.zeros_like(nmask)), init, atol=1e-4)
    assert torch.allclose(soft.blend(init, x0, torch.ones_like(nmask)), x0, atol=1e-4)


def test_step_mask_strengthens_the_original_at_high_noise() -> None:
    soft = SoftInpainting()
    nmask = torch.full((1, 1, 2, 2), 0.5)
    high, low = soft.step_mask(nmask, 10.0), soft.step_mask(nmask, 0.1)
    assert float(high.max()) < float(low.min())  # more of the original early on, more of the sample late


def _filter_reference(img: np.ndarray, kernel: np.ndarray, lo: float, hi: float,
                      min_width: float) -> np.ndarray:
    """A1111's weighted histogram filter, one pixel at a time with explicit sorting and window arithmetic."""
    h, w = img.shape
    c = kernel.shape[0] // 2
    out = np.zeros_like(img)
    for y in range(h):
        for x in range(w):
            samples = []
            for ky in range(kernel.shape[0]):
                for kx in range(kernel.shape[1]):
                    iy, ix = y + ky - c, x + kx - c
                    if 0 <= iy < h and 0 <= ix < w:
                        samples.append((img[iy, ix], kernel[ky, kx]))
            samples.sort(key=lambda s: s[0])
            stack, total = [], 0.0
            for v, wt in samples:
                stack.append((v, total, total + wt))
                total += wt
            a, b = total * lo, total * hi
            if b - a < min_width:
                mid = (a + b) / 2
                a, b = mid - min_width / 2, mid + min_width / 2
                if b > total:
                    a, b = total - min_width, total
                if a < 0:
                    a, b = 0.0, min_width
            num = den = 0.0
            for v, s, e in stack:
                if a >= e:
                    continue
                if b <= s:
                    break
                part = min(b, e) - max(a, s)
                num, den = num + v * part, den + part
            out[y, x] = num / den if den else 0.0
    return out


@pytest.mark.parametrize(("lo", "hi", "min_width"), [(0.9, 1.0, 1.0), (0.25, 0.75, 1.0), (0.9, 1.0, 0.05),
                                                     (0.25, 0.75, 0.1), (0.0, 0.2, 0.3)])
def test_weighted_percentile_filter_matches_the_reference(lo: float, hi: float, min_width: float) -> None:
    img = np.random.default_rng(1).random((7, 9))
    kernel = gaussian_kernel(1.5, 2)
    assert kernel.shape == (5, 5) and math.isclose(kernel.sum(), 1.0)
    assert np.allclose(weighted_percentile_filter(img, kernel, lo, hi, min_width),
                       _filter_reference(img, kernel, lo, hi, min_width))


def test_overlay_masks_follow_the_latent_difference() -> None:
    """Where the sampled latent equals the init one the original is kept (mask 0); where it moved far, the
    result is taken (mask near 255)."""
    init = torch.zeros(1, 4, 8, 8)
    latents = init.clone()
    latents[:, :, :, 4:] = 3.0  # the right half moved a lot
    nmask = torch.ones(1, 1, 8, 8)
    (take,) = SoftInpainting().overlay_masks(nmask, init, latents, 64, 64)
    arr = np.asarray(take, dtype=np.float64)
    assert take.size == (64, 64) and take.mode == "L"
    assert arr[:, :8].max() < 10 and arr[:, -8:].min() > 245
    # the reference for one pixel far from the edge: distance 0 -> 1 / (1 + 0) = 1 -> smootherstep 1 -> 0
    assert float(smootherstep(np.array(1.0))) == 1.0


def test_cut_overlay_keeps_the_original_only_where_the_result_is_not_taken() -> None:
    overlay = Image.new("RGBA", (4, 2), (200, 100, 50, 255))
    take = Image.new("L", (4, 2), 0)
    take.paste(255, (2, 0, 4, 2))
    out = np.asarray(cut_overlay(overlay, take, None))
    assert (out[:, :2, 3] == 255).all() and (out[:, 2:, 3] == 0).all()
    assert tuple(out[0, 0, :3]) == (200, 100, 50)
    boxed = np.asarray(cut_overlay(Image.new("RGBA", (8, 8), (9, 9, 9, 255)), Image.new("L", (4, 4), 255),
                                   (2, 2, 4, 4)))
    assert (boxed[2:6, 2:6, 3] == 0).all() and boxed[0, 0, 3] == 255  # outside the crop box: kept
