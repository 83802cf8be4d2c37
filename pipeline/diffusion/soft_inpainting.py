"""Soft inpainting (A1111 v1.10's built-in "Soft Inpainting" script): a soft mask, blended into the latents
at every step with a noise-dependent strength, and a final pixel composite that keeps the original where
the result barely changed.

Per step (A1111's `on_mask_blend`, in place of the hard blend x0 * nmask + init * (1 - nmask)):

    t      = nmask ** (sigma ** schedule_bias * preservation_strength)
             (sigma: the call's noise level; the timestep for DDIM/PLMS/UniPC, as A1111 hands it over)
    lin    = init * (1 - t) + x0 * t                                          (per latent pixel)
    |out|  = ((1 - t) |init|^p + t |x0|^p) ** (1/p),  p = transition contrast boost (the channel norm)
    out    = lin * |out| / (|lin| + 1e-5)

The final hard blend of the sampled latent is skipped. After decoding (A1111's `post_sample`), the overlay
of the original gets a new mask: the channel distance between the init and the sampled latents, smoothed
twice by a weighted-percentile filter over a 5x5 Gaussian window (percentiles 0.9-1, then 0.25-0.75, with a
window of at least 1 weight unit), divided by difference_threshold * s, where
s = m / (1.00001 - m), m = 0.5 (1 - mask_influence)
    + (1 - clamp(nmask) ** (preservation_strength / 2)) * mask_influence;
then 1 / (1 + d ** difference_contrast), smootherstep, inverted, resized to the image (Lanczos), blurred
(Gaussian radius 4) and pasted into the crop box for "only masked". The original is kept with that mask's
inverse, on top of its own overlay mask."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

# A1111's infotext labels, in its order
LABELS = ("Soft inpainting schedule bias", "Soft inpainting preservation strength",
          "Soft inpainting transition contrast boost", "Soft inpainting mask influence",
          "Soft inpainting difference threshold", "Soft inpainting difference contrast")
ENABLED_LABEL = "Soft inpainting enabled"


@dataclass(frozen=True)
class SoftInpainting:
    """The script's six settings (after its enable flag), A1111's names in comments."""

    schedule_bias: float = 1.0  # mask_blend_power
    preservation_strength: float = 0.5  # mask_blend_scale
    transition_contrast_boost: float = 4.0  # inpaint_detail_preservation
    mask_influence: float = 0.0  # composite_mask_influence
    difference_threshold: float = 0.5  # composite_difference_threshold
    difference_contrast: float = 2.0  # composite_difference_contrast

    def infotext(self) -> dict[str, object]:
        values = (self.schedule_bias, self.preservation_strength, self.transition_contrast_boost,
                  self.mask_influence, self.difference_threshold, self.difference_contrast)
        return {ENABLED_LABEL: True, **dict(zip(LABELS, values, strict=True))}

    def step_mask(self, nmask: torch.Tensor, sigma: float) -> torch.Tensor:
        """The blend weight of the denoised latent at noise level `sigma` (nmask: 1 = repaint)."""
        return torch.pow(nmask, (sigma ** self.schedule_bias) * self.preservation_strength)

    def blend(self, init: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """init and x0 interpolated by t, the vectors' lengths (over channels) interpolated separately as
        p-th powers (p = transition_contrast_boost), which favours the longer of the two."""
        p = self.transition_contrast_boost
        t = t[:, :1].to(x0.dtype)
        lin = init * (1 - t) + x0 * t
        length = torch.linalg.vector_norm(lin, dim=1, keepdim=True).double() + 0.00001
        want = ((1 - t.double()) * torch.linalg.vector_norm(init, dim=1, keepdim=True).double() ** p
                + t.double() * torch.linalg.vector_norm(x0, dim=1, keepdim=True).double() ** p) ** (1 / p)
        return lin * (want / length).to(lin.dtype)

    def overlay_masks(self, nmask: torch.Tensor, init: torch.Tensor, latents: torch.Tensor, width: int,
                      height: int) -> list[Image.Image]:
        """Per image: the L mask (255 = take the result) the original's overlay is cut with, at
        width x height."""
        m = nmask[:, 0].float().clamp(0, 1) if nmask.dim() == 4 else nmask[0].float().clamp(0, 1)[None]
        scalar = 1 - m ** (self.preservation_strength / 2)
        scalar = 0.5 * (1 - self.mask_influence) + scalar * self.mask_influence
        scalar = (scalar / (1.00001 - scalar)).cpu().numpy()
        moved = latents.float() - init.float().to(latents.device)
        distance = torch.linalg.vector_norm(moved, dim=1).cpu().numpy()
        kernel = gaussian_kernel(1.5, 2)
        out = []
        for i, d in enumerate(distance.astype(np.float64)):
            d = weighted_percentile_filter(d, kernel, 0.9, 1.0, 1.0)
            d = weighted_percentile_filter(d, kernel, 0.25, 0.75, 1.0)
            half = self.difference_threshold * scalar[min(i, len(scalar) - 1)]
            with np.errstate(divide="ignore", invalid="ignore"):
                keep = 1 / (1 + (d / half) ** self.difference_contrast)
            keep = np.nan_to_num(keep, nan=0.0)
            take = 1 - smootherstep(keep)
            mask = Image.fromarray((255.0 * take).astype(np.uint8), "L")
            mask = mask.resize((width, height), Image.Resampling.LANCZOS)
            out.append(mask.filter(ImageFilter.GaussianBlur(radius=4)))
        return out


def smootherstep(x: np.ndarray) -> np.ndarray:
    return x * x * x * (x * (6 * x - 15) + 10)


def gaussian_kernel(stddev_radius: float, max_radius: int) -> np.ndarray:
    """A (2r+1)^2 kernel of exp(-d^2 / s^2) over the offsets d, normalised to sum 1."""
    r = np.arange(-max_radius, max_radius + 1, dtype=np.float64)
    sq = r[:, None] ** 2 + r[None, :] ** 2
    k = np.exp(-sq / (stddev_radius * stddev_radius))
    return k / k.sum()


def weighted_percentile_filter(img: np.ndarray, kernel: np.ndarray, lo: float, hi: float,
                               min_width: float) -> np.ndarray:
    """Each pixel: the samples of its kernel window (the part inside the image), sorted by value and stacked
    by their kernel weights; the mean of the values over the stack's [lo, hi] fraction (widened to at least
    `min_width` weight units and kept inside the stack), each weighted by its overlap with that range."""
    h, w = img.shape
    kh, kw = kernel.shape
    cy, cx = kh // 2, kw // 2
    padded = np.pad(img, ((cy, cy), (cx, cx)))
    inside = np.pad(np.ones_like(img), ((cy, cy), (cx, cx)))
    values = np.stack([padded[y:y + h, x:x + w] for y in range(kh) for x in range(kw)], axis=-1)
    weights = np.stack([inside[y:y + h, x:x + w] * kernel[y, x] for y in range(kh) for x in range(kw)],
                       axis=-1)
    order = np.argsort(values, axis=-1, kind="stable")
    values = np.take_along_axis(values, order, axis=-1)
    weights = np.take_along_axis(weights, order, axis=-1)
    top = np.cumsum(weights, axis=-1)
    bottom = top - weights
    total = top[..., -1:]
    wmin, wmax = total * lo, total * hi
    narrow = (wmax - wmin) < min_width
    centre = (wmin + wmax) / 2
    wmin = np.where(narrow, centre - min_width / 2, wmin)
    wmax = np.where(narrow, centre + min_width / 2, wmax)
    over = narrow & (wmax > total)
    wmin, wmax = np.where(over, total - min_width, wmin), np.where(over, total, wmax)
    under = narrow & (wmin < 0)
    wmin, wmax = np.where(under, 0.0, wmin), np.where(under, min_width, wmax)
    overlap = np.clip(np.minimum(wmax, top) - np.maximum(wmin, bottom), 0.0, None)
    num = (values * overlap).sum(-1)
    den = overlap.sum(-1)
    return np.where(den != 0, num / np.where(den != 0, den, 1.0), 0.0)


def lay_into(take: Image.Image, size: tuple[int, int], paste_to: tuple[int, int, int, int] | None
             ) -> Image.Image:
    """`take` (L, at the processing size) as a mask of `size`: for "only masked" resized into its crop box
    `paste_to` (x, y, w, h), 0 outside it; else as it is."""
    if paste_to is None:
        return take
    x, y, w, h = paste_to
    canvas = Image.new("L", size, 0)
    canvas.paste(take.resize((w, h), Image.Resampling.LANCZOS), (x, y))
    return canvas


def cut_overlay(overlay: Image.Image, take: Image.Image, paste_to: tuple[int, int, int, int] | None
                ) -> Image.Image:
    """The original's overlay (RGBA) kept only where `take` (the result's share) is low; for "only masked"
    `take` is laid into its crop box of the overlay's size first (outside it, the overlay stays)."""
    take = lay_into(take, overlay.size, paste_to)
    premultiplied = Image.new("RGBa", overlay.size)
    premultiplied.paste(overlay.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(take.convert("L")))
    return premultiplied.convert("RGBA")


def noise_level(kind: str, sigma: float, timestep: float) -> float:
    """What A1111 hands the blend as `sigma`: the noise level for k-diffusion samplers, the model timestep
    for the timestep samplers (their denoiser is called with timesteps)."""
    return float(timestep) if kind == "timesteps" else float(sigma)

