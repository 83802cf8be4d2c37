"""Tiled VAE decode/encode against the untiled result, and the out-of-memory fallback.

Tolerance: tiling is not exact. Each tile's GroupNorm layers normalise with that tile's statistics instead
of the whole image's, and the overlapping tiles are blended linearly over a quarter of the tile, so values
near tile borders move a little. The check is therefore relative: the tiled result must be much closer to
the untiled one (mean absolute difference below 15% for decode, 35% for encode) than the results of two
unrelated inputs are to each other, and strongly correlated with it (> 0.95). A wrong tile placement,
a missing blend or a shifted tile breaks both bounds by a wide margin."""
from __future__ import annotations

import pytest
import torch

from pipeline.models import vae_codec as vae


def _latent(seed: int, h: int = 32, w: int = 32) -> torch.Tensor:
    return torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(seed))


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


@pytest.fixture(scope="module")
def decoded(builtin_model):
    """Two unrelated 256x256 decodes (untiled) and their latents."""
    z1, z2 = _latent(1), _latent(2)
    return z1, vae.decode(builtin_model, z1), vae.decode(builtin_model, z2)


def test_tiled_decode_matches_untiled(builtin_model, decoded):
    z1, full, other = decoded
    tiled = vae.decode(builtin_model, z1, force_tiled=True, tile_latent=16)
    assert tiled.shape == full.shape == (1, 3, 256, 256)
    unrelated = (full - other).abs().mean()
    assert (tiled - full).abs().mean() < 0.15 * unrelated
    assert _corr(tiled, full) > 0.95


def test_tiled_encode_matches_untiled(builtin_model, decoded):
    _, img1, img2 = decoded
    full, other = vae.encode(builtin_model, img1), vae.encode(builtin_model, img2)
    tiled = vae.encode(builtin_model, img1, force_tiled=True, tile_latent=16)
    assert tiled.shape == full.shape == (1, 4, 32, 32)
    assert (tiled - full).abs().mean() < 0.35 * (full - other).abs().mean()
    assert _corr(tiled, full) > 0.95


def test_large_images_are_tiled_automatically(builtin_model, monkeypatch):
    sizes: list[tuple[int, int]] = []
    handle = builtin_model.vae.decoder.register_forward_pre_hook(lambda _m, a: sizes.append(tuple(a[0].shape[-2:])))
    try:
        vae.decode(builtin_model, _latent(3), tile_above_pixels=128 * 128, tile_latent=16)
    finally:
        handle.remove()
    assert len(sizes) > 1 and max(sizes) == (16, 16)


def _oom_above(module: torch.nn.Module, side: int):
    """Make `module` raise CUDA-style out-of-memory for inputs larger than side x side."""
    def pre(_m, args):
        if max(args[0].shape[-2:]) > side:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 58.00 GiB")
    return module.register_forward_pre_hook(pre)


def test_decode_falls_back_to_tiles_on_out_of_memory(builtin_model, decoded):
    z1, full, _ = decoded
    handle = _oom_above(builtin_model.vae.decoder, 16)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            builtin_model.vae.decode(z1 / builtin_model.vae.config.scaling_factor)  # the plain call fails
        out = vae.decode(builtin_model, z1)  # ours retries with smaller tiles until one fits
    finally:
        handle.remove()
    assert out.shape == full.shape
    assert _corr(out, full) > 0.95


def test_encode_falls_back_to_tiles_on_out_of_memory(builtin_model, decoded):
    _, img1, _ = decoded
    full = vae.encode(builtin_model, img1)
    handle = _oom_above(builtin_model.vae.encoder, 128)
    try:
        out = vae.encode(builtin_model, img1)
    finally:
        handle.remove()
    assert out.shape == full.shape
    assert _corr(out, full) > 0.95


def test_out_of_memory_even_at_the_smallest_tile_is_raised(builtin_model):
    handle = _oom_above(builtin_model.vae.decoder, 4)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            vae.decode(builtin_model, _latent(4, 16, 16))
    finally:
        handle.remove()


def test_other_errors_are_not_retried(builtin_model):
    calls = []

    def pre(_m, args):
        calls.append(1)
        raise RuntimeError("expected 4 channels")

    handle = builtin_model.vae.decoder.register_forward_pre_hook(pre)
    try:
        with pytest.raises(RuntimeError, match="expected 4 channels"):
            vae.decode(builtin_model, _latent(5, 16, 16))
    finally:
        handle.remove()
    assert len(calls) == 1
