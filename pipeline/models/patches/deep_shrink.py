"""Kohya Deep Shrink (Forge's "Kohya HRFix Integrated", ComfyUI's PatchModelAddDownscale): during the early,
noisy part of sampling the UNet works below one input block at a downscaled size, so a pass at a high
resolution lays out its composition at the size the model was trained for.

While the call's percent of the noise range (0 at the noisiest timestep, 1 at the last; start and end
percents as Forge's sigma comparison counts them) is within [start, end], input block `block_number`'s
output is resized by 1 / `downscale_factor` (round of each side): only the hidden state passed on
(`downscale_after_skip`, the default) or also the skip it pushes. On the way up, every hidden state whose
size differs from the skip it is concatenated with is resized to that skip's size (`upscale_method`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.models.patches.blocks import input_block_patch, output_block_patch
from pipeline.models.patches.layer import UNetPatcher

METHODS = ("bicubic", "nearest-exact", "bilinear", "area", "bislerp")


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of feature vectors along the last dimension, norms interpolated linearly;
    (anti)parallel pairs fall back to a / the linear mix."""
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua = torch.where(na > 0, a / na.clamp_min(1e-30), torch.zeros_like(a))
    ub = torch.where(nb > 0, b / nb.clamp_min(1e-30), torch.zeros_like(b))
    dot = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    safe = so.abs() > 1e-8
    so = torch.where(safe, so, torch.ones_like(so))
    out = (torch.sin((1 - t) * omega) / so) * ua + (torch.sin(t * omega) / so) * ub
    out = out * (na * (1 - t) + nb * t)
    linear = a * (1 - t) + b * t
    out = torch.where(dot > 1 - 1e-5, a, out)
    return torch.where((dot < 1e-5 - 1) | ~safe & (dot <= 1 - 1e-5), linear, out)


def _source_positions(old: int, new: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of `new` output positions: the two neighbouring input positions and the weight of the
    second, with half-pixel centres (as bilinear resizing without corner alignment)."""
    pos = ((torch.arange(new, device=device, dtype=torch.float64) + 0.5) * old / new - 0.5).clamp(0, old - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=old - 1)
    return lo, hi, (pos - lo).float()


def bislerp(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize (B, C, H, W) features by slerping neighbouring channel vectors, width then height."""
    dtype = x.dtype
    v = x.float().permute(0, 2, 3, 1)  # B H W C
    lo, hi, t = _source_positions(v.shape[2], width, v.device)
    v = _slerp(v[:, :, lo], v[:, :, hi], t[None, None, :, None])
    lo, hi, t = _source_positions(v.shape[1], height, v.device)
    v = _slerp(v[:, lo], v[:, hi], t[None, :, None, None])
    return v.permute(0, 3, 1, 2).to(dtype)


def resize(x: torch.Tensor, height: int, width: int, method: str) -> torch.Tensor:
    if method == "bislerp":
        return bislerp(x, height, width)
    if method in ("bicubic", "bilinear"):
        return F.interpolate(x, size=(height, width), mode=method, align_corners=False)
    return F.interpolate(x, size=(height, width), mode=method)


@dataclass
class DeepShrink:
    """The UNet patch, Forge's arguments in Forge's order. `shrunk` records (from, to) sizes of every
    downscale."""

    block_number: int = 3
    downscale_factor: float = 2.0
    start_percent: float = 0.0
    end_percent: float = 0.35
    downscale_after_skip: bool = True
    downscale_method: str = "bicubic"
    upscale_method: str = "bicubic"

    def __post_init__(self) -> None:
        self.shrunk: list[tuple[tuple[int, int], tuple[int, int]]] = []

    def active(self, percent: float) -> bool:
        return (self.start_percent <= 0 or percent >= self.start_percent - 1e-9) and \
            (self.end_percent >= 1 or percent <= self.end_percent + 1e-9)

    def apply(self, patcher: UNetPatcher) -> None:
        def down(h: torch.Tensor, k: int) -> torch.Tensor:
            if k != self.block_number or not self.active(patcher.call.percent()):
                return h
            size = (round(h.shape[-2] / self.downscale_factor), round(h.shape[-1] / self.downscale_factor))
            self.shrunk.append(((h.shape[-2], h.shape[-1]), size))
            return resize(h, size[0], size[1], self.downscale_method)

        def up(h: torch.Tensor, hsp: torch.Tensor, _j: int) -> tuple[torch.Tensor, torch.Tensor]:
            if h.shape[-2:] != hsp.shape[-2:]:
                h = resize(h, hsp.shape[-2], hsp.shape[-1], self.upscale_method)
            return h, hsp

        input_block_patch(patcher, down, after_skip=self.downscale_after_skip)
        output_block_patch(patcher, up)
