"""Automatic tiling: a sampling pass whose estimated peak memory would not fit runs in tiles (default
method and overlap), as the VAE falls back to tiles (pipeline/vae.py). The job's infotext then says
`Tiled Diffusion: auto`, and one log line says why.

The estimate is a UNet forward's transient memory over the CFG batch (weights are already resident):
- activations grow with the area: rows x tokens x base width x bytes x ACTIVATION_FACTOR (the resnet and
  transformer intermediates of the full-resolution blocks plus the skip connections kept for the decoder);
- attention without a fused kernel (diffusers' classic processor) holds the heads x tokens x tokens score
  matrix of the largest attention block; with scaled_dot_product_attention (the default processor) that
  matrix is never materialised, so the term is left out.
The budget is the option `tiled_diffusion_auto_budget_mb` when it is above 0, else a fixed share of the
device's TOTAL memory (CUDA: the card's total memory; CPU: the machine's RAM) less the model's own weights.
It never reads the momentary free memory: the decision, and so the pixels, depend on the request and the
server's configuration only, never on what an earlier job left allocated (the same request on the same
server gives the same bytes)."""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

import psutil
import torch

from .merge import TileSettings

log = logging.getLogger("hiresd.tiled")

ACTIVATION_FACTOR = 24
TOTAL_FRACTION = 0.8  # of the device's total memory, less the weights, a pass may plan to use
TILE_CHOICES = (96, 64, 48, 32)  # latent cells: the default tile first, smaller while it does not fit
INFOTEXT_KEY = "Tiled Diffusion"


def _heads(cfg: Any, level: int) -> int:
    """Attention heads at a level (diffusers' SD configs store the head count in `attention_head_dim`)."""
    heads = cfg.num_attention_heads or cfg.attention_head_dim
    if isinstance(heads, Iterable) and not isinstance(heads, (str, bytes)):
        heads = list(heads)[level]
    return int(heads)


def _materialises_scores(unet: Any) -> bool:
    """True when some attention processor computes the full score matrix (not the fused SDPA kernel)."""
    processors = getattr(unet, "attn_processors", {}) or {}
    return any("2_0" not in type(p).__name__ and "SDPA" not in type(p).__name__.upper()
               for p in processors.values())


def pass_bytes(unet: Any, rows: int, latent_h: int, latent_w: int, itemsize: int) -> int:
    """Estimated transient bytes of one UNet call over `rows` latents (CFG doubles the batch)."""
    cfg = unet.config
    tokens = latent_h * latent_w
    widths = list(cfg.block_out_channels)
    acts = rows * tokens * widths[0] * itemsize * ACTIVATION_FACTOR
    attn = 0
    if _materialises_scores(unet):
        for level, kind in enumerate(cfg.down_block_types):
            if "CrossAttn" in kind:
                t = tokens // (4 ** level)
                attn = max(attn, rows * _heads(cfg, level) * t * t * itemsize)
    return int(acts + attn)


def total_bytes(device: torch.device) -> int:
    """The device's total memory: a CUDA card's, else the machine's RAM (fixed while the server runs)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(psutil.virtual_memory().total)


def weight_bytes(model: Any) -> int:
    """The bytes of a model's weights (UNet, text encoders, VAE), wherever they sit: fixed per model."""
    cached = model.extra.get("tiled.weight_bytes")
    if cached is None:
        modules = [model.unet, model.vae, *model.text_encoders]
        cached = sum(t.numel() * t.element_size() for m in modules for t in m.parameters())
        model.extra["tiled.weight_bytes"] = cached
    return int(cached)


def budget_bytes(options: dict[str, Any], device: torch.device, model: Any = None) -> int:
    """The bytes a pass may plan to use: the option `tiled_diffusion_auto_budget_mb` when above 0, else
    TOTAL_FRACTION of the device's total memory less the model's weights (at least 1 MiB)."""
    mb = int(options.get("tiled_diffusion_auto_budget_mb", 0) or 0)
    if mb > 0:
        return mb * 2**20
    weights = weight_bytes(model) if model is not None else 0
    return max(int(total_bytes(device) * TOTAL_FRACTION) - weights, 2**20)


def auto_tiles(unet: Any, batch: int, latent_h: int, latent_w: int, itemsize: int, budget: int
               ) -> TileSettings | None:
    """None when the untiled pass fits `budget`; else the largest default-shaped tiling that fits (batch 4
    tiles per call, fewer, then smaller tiles), or the smallest one when none does."""
    rows = 2 * batch
    if pass_bytes(unet, rows, latent_h, latent_w, itemsize) <= budget:
        return None
    choice = TileSettings(tile_width=TILE_CHOICES[-1], tile_height=TILE_CHOICES[-1], batch=1)
    for tile in TILE_CHOICES:
        th, tw = min(tile, latent_h), min(tile, latent_w)
        for per_call in (4, 2, 1):
            if pass_bytes(unet, rows * per_call, th, tw, itemsize) <= budget:
                return TileSettings(tile_width=tile, tile_height=tile, batch=per_call)
    return choice


def tiles_for_pass(p: Any, model: Any, batch: int, width: int, height: int) -> TileSettings | None:
    """The tiling of one pass: the request's (`p.tiles`), else automatic tiles when the pass would not fit
    (option `tiled_diffusion_auto`, on by default; never for 9-channel inpainting models). Records
    `Tiled Diffusion: auto` in the job's infotext when it tiles on its own, the settings (JSON) when asked."""
    if p.tiles is not None:
        t = p.tiles
        p.extra_generation_params[INFOTEXT_KEY] = json.dumps({  # what ran, in the alwayson entry's latent cells
            "Method": t.method, "Latent tile width": t.tile_width, "Latent tile height": t.tile_height,
            "Latent tile overlap": t.overlap, "Latent tile batch size": t.batch})
        return t
    if not p.options.get("tiled_diffusion_auto", True):
        return None
    if int(model.unet.config.in_channels) != int(model.latent_channels):
        return None
    lh, lw = height // 8, width // 8
    itemsize = torch.empty((), dtype=model.dtype).element_size()
    budget = budget_bytes(p.options, model.device, model)
    tiles = auto_tiles(model.unet, batch, lh, lw, itemsize, budget)
    if tiles is not None:
        need = pass_bytes(model.unet, 2 * batch, lh, lw, itemsize)
        log.info("Tiled Diffusion: auto, %dx%d needs about %d MiB per UNet call, over the %d MiB budget: "
                 "%dx%d-cell tiles, %d per call", width, height, need >> 20, budget >> 20, tiles.tile_width,
                 tiles.tile_height, tiles.batch)
        p.extra_generation_params[INFOTEXT_KEY] = "auto"
    return tiles
