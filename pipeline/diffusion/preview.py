"""Cheap live previews: a linear latent-to-RGB approximation (no VAE), for `/progress` `current_image`.

A1111's option `show_progress_type` also names "Approx NN" (its default: a small network whose weights A1111
downloads), "TAESD" (likewise) and "Full" (a VAE decode per preview). This server ships no preview weights
and keeps the VAE off the progress path: every method is served with this approximation ("Approx cheap"),
and the first job that asks for another method says so in the log (`preview_fallback`)."""
from __future__ import annotations

import logging

import torch
from PIL import Image

log = logging.getLogger("hiresd.preview")
SERVED_METHOD = "Approx cheap"
_told: set[str] = set()


def preview_fallback(method: str | None) -> None:
    """Log once per method that live previews of `method` (option `show_progress_type`) are served with
    the linear approximation."""
    if method and method != SERVED_METHOD and method not in _told:
        _told.add(method)
        log.info("show_progress_type %r: live previews use %r here (no %s preview weights or decoder on "
                 "the progress path); the images are not affected", method, SERVED_METHOD, method)

# Per-channel RGB contributions of the SD 1.x/2.x and SDXL latent spaces (widely used approximations).
_SD1 = torch.tensor([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264],
                     [-0.184, -0.271, -0.473]])
_SDXL = torch.tensor([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
                      [-0.3165, -0.2492, -0.2188]])
_SDXL_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])


def latent_preview(latents: torch.Tensor, family: str) -> Image.Image:
    """First image of a (B, 4, h, w) latent batch as a small RGB picture (8x smaller than the output)."""
    z = latents[0].detach().float().cpu()
    if z.shape[0] != 4:
        z = z[:4]
    factors, bias = (_SDXL, _SDXL_BIAS) if family == "sdxl" else (_SD1, torch.zeros(3))
    rgb = torch.einsum("chw,cr->rhw", z, factors) + bias[:, None, None]
    rgb = ((rgb + 1) / 2).clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy()
    return Image.fromarray(rgb, "RGB")
