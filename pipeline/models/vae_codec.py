"""VAE decode and encode that never fail where a tiled pass would fit.

Large images go through the VAE in overlapping tiles (diffusers' blend of overlapping tiles); when a whole
pass runs out of memory we retry tiled, halving the tile until it fits. Images are processed one at a time
so that a batch costs no more peak memory than one image."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from PIL import Image

from pipeline.models.sd_model import SDModel

log = logging.getLogger("hiresd.vae")

# Images above this many pixels are decoded tiled from the start (about 1536x1536), unless tiling is off.
DEFAULT_TILE_ABOVE_PIXELS = 1536 * 1536
MIN_TILE_LATENT = 8


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class _Tiles:
    """Temporarily set diffusers' tile geometry on a VAE (sizes in latent cells)."""

    def __init__(self, vae: Any, tile_latent: int | None):
        self.vae = vae
        self.tile_latent = tile_latent

    def __enter__(self) -> None:
        v = self.vae
        self.saved = (v.use_tiling, v.tile_latent_min_size, v.tile_sample_min_size, v.tile_overlap_factor)
        if self.tile_latent is None:
            v.use_tiling = False
        else:
            v.use_tiling = True
            f = 2 ** (len(v.config.block_out_channels) - 1)
            v.tile_latent_min_size = self.tile_latent
            v.tile_sample_min_size = self.tile_latent * f
            v.tile_overlap_factor = 0.25

    def __exit__(self, *exc: object) -> None:
        v = self.vae
        v.use_tiling, v.tile_latent_min_size, v.tile_sample_min_size, v.tile_overlap_factor = self.saved


def _with_fallback(run: Callable[[int | None], torch.Tensor], side_latent: int, start_tiled: bool,
                   tile_latent: int) -> torch.Tensor:
    """Run untiled (or tiled when asked), halving the tile on each out-of-memory until it fits."""
    tile: int | None = min(tile_latent, side_latent) if start_tiled else None
    while True:
        try:
            return run(tile)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
            if not is_oom(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            nxt = min(tile_latent, side_latent) if tile is None else tile // 2
            if nxt < MIN_TILE_LATENT:
                raise
            log.warning("VAE out of memory at tile %s; retrying with %d-latent tiles", tile or "none", nxt)
            tile = nxt


def decode(model: SDModel, latents: torch.Tensor, *, tile_above_pixels: int = DEFAULT_TILE_ABOVE_PIXELS,
           tile_latent: int = 64, force_tiled: bool = False) -> torch.Tensor:
    """Latents (B, C, h, w) -> images (B, 3, H, W) in [0, 1], float32 on the CPU."""
    vae = model.vae
    dtype = model.vae_dtype or model.dtype
    f = model.vae_scale_factor
    out = []
    for one in latents.split(1):
        z = one.to(model.device, dtype) / vae.config.scaling_factor
        h, w = z.shape[-2:]
        start_tiled = force_tiled or h * w * f * f > tile_above_pixels

        def run(tile: int | None, z: torch.Tensor = z) -> torch.Tensor:
            with _Tiles(vae, tile), torch.inference_mode():
                return vae.decode(z).sample

        img = _with_fallback(run, max(h, w), start_tiled, tile_latent)
        fallback = model.extra.get("vae_nan_fallback")
        if fallback is not None and fallback != dtype and bool(torch.isnan(img).all()):
            dtype = _widen_vae(model, fallback)
            z = one.to(model.device, dtype) / vae.config.scaling_factor
            img = _with_fallback(lambda tile, z=z: run(tile, z), max(h, w), start_tiled, tile_latent)
        out.append(((img.float() + 1) / 2).clamp(0, 1).cpu())
    return torch.cat(out)


def _widen_vae(model: SDModel, dtype: torch.dtype) -> torch.dtype:
    """A1111's `auto_vae_precision` (float32) / `auto_vae_precision_bfloat16`: a decode that came out all
    NaN (the VAE overflowed in half precision) is run again with the VAE converted to `dtype`, which it
    keeps from then on (as A1111's `devices.dtype_vae`)."""
    log.warning("a tensor with all NaNs was produced in the VAE (%s): converting the VAE of %s to %s and "
                "decoding again (options auto_vae_precision / auto_vae_precision_bfloat16; --no-half-vae "
                "starts with a float32 VAE)", str(model.vae_dtype or model.dtype).replace("torch.", ""),
                model.title, str(dtype).replace("torch.", ""))
    model.vae.to(dtype)
    model.vae_dtype = dtype
    return dtype


def to_images(images: torch.Tensor) -> list[Image.Image]:
    """Decoded images (B, 3, H, W) in [0, 1] -> 8-bit RGB pictures, converted as A1111 does: scaled by 255
    in float32 and truncated (numpy's astype(uint8)), not rounded. Every image that leaves the VAE goes
    through here, so that the same request gives A1111's pixels (rounding would lift about half the
    values by one level). On a GPU the same arithmetic runs there (float32 times 255, truncating cast), so a
    quarter of the bytes cross to the host and the host does no float maths; on the CPU numpy's is faster."""
    x = images.float().clamp(0, 1)
    arr = _to_uint8_on_device(x) if x.device.type != "cpu" else (
        x.permute(0, 2, 3, 1).numpy() * np.float32(255.0)).astype(np.uint8)
    return [Image.fromarray(a, "RGB") for a in arr]


def _to_uint8_on_device(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float32 in [0, 1] -> (B, H, W, 3) uint8 on the host, converted on x's device."""
    return (x * 255.0).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def encode(model: SDModel, images: torch.Tensor, *, tile_above_pixels: int = DEFAULT_TILE_ABOVE_PIXELS,
           tile_latent: int = 64, force_tiled: bool = False) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] -> scaled float32 latents (B, C, H/8, W/8) on the model's device.

    Uses the mean of the latent distribution (deterministic), where A1111 samples it with the global RNG."""
    vae = model.vae
    dtype = model.vae_dtype or model.dtype
    f = model.vae_scale_factor
    out = []
    for one in images.split(1):
        x = (one.to(model.device, dtype) * 2 - 1)
        h, w = x.shape[-2:]
        start_tiled = force_tiled or h * w > tile_above_pixels

        def run(tile: int | None, x: torch.Tensor = x) -> torch.Tensor:
            with _Tiles(vae, tile), torch.inference_mode():
                if tile is not None and (h > tile * f or w > tile * f):
                    moments = vae._tiled_encode(x)
                    return DiagonalGaussianDistribution(moments).mode()
                return vae.encode(x).latent_dist.mode()

        lat = _with_fallback(run, max(h, w) // f, start_tiled, tile_latent)
        out.append(lat.float() * vae.config.scaling_factor)
    return torch.cat(out)  # float32 whatever the VAE computed in: the sampler's arithmetic is float32
