"""Changes to classifier-free guidance for one sampling pass, as Forge's integrated scripts make them: Dynamic
Thresholding replaces the CFG mix, Perturbed-Attention Guidance and Self-Attention Guidance add a term after
it (Forge's post-CFG functions, PAG's first). All of them work on the denoised estimates x0, as Forge's do;
the loop's model output (eps or v) is converted to x0 and back with the pass's noise levels.

- Dynamic Thresholding (mcmonkey's sd-dynamic-thresholding): the CFG result at `mimic_scale` gives the
  target spread; the result at the real CFG scale is re-centred on its mean, clamped at the percentile of its
  absolute values (or normalised by its standard deviation) and rescaled to that spread, per channel or
  over the whole latent; `interpolate_phi` mixes it back with the plain CFG result.
- PAG (Ahn et al. 2024): one more UNet call on the prompt with the mid block's self-attention replaced by the
  identity; result += (cond - perturbed) * scale, the scale falling by `attenuation`% of itself per call,
  only on the steps whose fraction i / (steps - 1) lies within [start, end].
- SAG (Hong et al. 2023): the unconditional x0 is blurred where the mid block's self-attention (recorded in
  the main call) is above `threshold`, re-noised with the unconditional noise and sent through the UNet once
  more; result += (degraded - its prediction) * scale."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.diffusion.samplers.schedules import NoiseTable

TRAIN_STEPS = 1000


class NoiseLevels:
    """The pass's timesteps with the signal fraction alpha of each: converts a model output to x0 and back in
    the loop's (variance-preserving) model-input space, and gives a call's step index."""

    def __init__(self, alphas_cumprod: Any, timesteps: torch.Tensor, v_pred: bool):
        acp = np.asarray(alphas_cumprod, dtype=np.float64)
        ts = timesteps.double().cpu().numpy()
        sigmas = np.atleast_1d(NoiseTable(acp).t_to_sigma(ts.clip(0, len(acp) - 1)))
        self.timesteps = [float(t) for t in ts]
        self.alphas = [1.0 / (1.0 + float(s) ** 2) for s in sigmas]
        self.v_pred = v_pred

    def index(self, t: Any) -> int:
        value = float(t.flatten()[0]) if torch.is_tensor(t) else float(t)
        return min(range(len(self.timesteps)), key=lambda i: abs(self.timesteps[i] - value))

    def fraction(self, i: int) -> float:
        """A1111's sampling_step / (total_sampling_steps - 1), 0 for a one-step pass."""
        return i / (len(self.timesteps) - 1) if len(self.timesteps) > 1 else 0.0

    def to_x0(self, out: torch.Tensor, x_in: torch.Tensor, i: int) -> torch.Tensor:
        sa, s1a = math.sqrt(self.alphas[i]), math.sqrt(1.0 - self.alphas[i])
        x_in = x_in.float()
        return sa * x_in - s1a * out if self.v_pred else (x_in - s1a * out) / sa

    def from_x0(self, x0: torch.Tensor, x_in: torch.Tensor, i: int) -> torch.Tensor:
        sa, s1a = math.sqrt(self.alphas[i]), math.sqrt(1.0 - self.alphas[i])
        x_in = x_in.float()
        return (sa * x_in - x0) / s1a if self.v_pred else (x_in - sa * x0) / s1a


def curve(mode: str, scale: float, low: float, frac: float, sched_val: float) -> float:
    """Dynamic Thresholding's schedule of a scale between `low` and `scale` at fraction `frac` of the noise."""
    factors: dict[str, Callable[[], float]] = {
        "Constant": lambda: 1.0, "Linear Down": lambda: 1.0 - frac, "Half Cosine Down": lambda: math.cos(frac),
        "Cosine Down": lambda: math.cos(frac * 1.5707), "Linear Up": lambda: frac,
        "Half Cosine Up": lambda: 1.0 - math.cos(frac), "Cosine Up": lambda: 1.0 - math.cos(frac * 1.5707),
        "Power Up": lambda: math.pow(frac, sched_val), "Power Down": lambda: 1.0 - math.pow(frac, sched_val),
        "Linear Repeating": lambda: _triangle((frac * sched_val) % 1.0),
        "Cosine Repeating": lambda: math.cos(frac * 6.28318 * sched_val) * 0.5 + 0.5,
        "Sawtooth": lambda: (frac * sched_val) % 1.0}
    return (scale - low) * factors[mode]() + low


def _triangle(portion: float) -> float:
    return (0.5 - portion) * 2 if portion < 0.5 else (portion - 0.5) * 2


def dynamic_threshold(cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float, s: dict[str, Any],
                      timestep: float) -> torch.Tensor:
    """The Dynamic Thresholding result from the cond and uncond x0 (B, C, H, W) at `timestep` (0..999)."""
    frac = (TRAIN_STEPS - 1 - timestep) / (TRAIN_STEPS - 2)
    mimic = curve(s["mimic_mode"], s["mimic_scale"], s["mimic_scale_min"], frac, s["sched_val"])
    cfg = curve(s["cfg_mode"], cfg_scale, s["cfg_scale_min"], frac, s["sched_val"])
    diff = cond - uncond
    mim_target, cfg_target = uncond + diff * mimic, uncond + diff * cfg
    mim_flat, cfg_flat = mim_target.flatten(2), cfg_target.flatten(2)
    cfg_means = cfg_flat.mean(dim=2, keepdim=True)
    mim_centred = mim_flat - mim_flat.mean(dim=2, keepdim=True)
    cfg_centred = cfg_flat - cfg_means
    std = s["variability_measure"] == "STD"
    if s["separate_feature_channels"] == "enable":
        if std:
            mim_ref, cfg_ref = mim_centred.std(dim=2, keepdim=True), cfg_centred.std(dim=2, keepdim=True)
        else:
            mim_ref = mim_centred.abs().amax(dim=2, keepdim=True)
            cfg_ref = torch.quantile(cfg_centred.abs(), s["threshold_percentile"], dim=2, keepdim=True)
    elif std:
        mim_ref, cfg_ref = mim_centred.std(), cfg_centred.std()
    else:
        mim_ref, cfg_ref = mim_centred.abs().max(), torch.quantile(cfg_centred.abs(), s["threshold_percentile"])
    if s["scaling_startpoint"] == "ZERO":
        result = cfg_flat * (mim_ref / cfg_ref)
    elif std:
        result = cfg_centred / cfg_ref * mim_ref + cfg_means
    else:
        top = torch.maximum(mim_ref, cfg_ref)
        result = cfg_centred.clamp(-top, top) / top * mim_ref + cfg_means
    out = result.unflatten(2, mim_target.shape[2:])
    phi = s["interpolate_phi"]
    return out if phi == 1.0 else out * phi + cfg_target * (1.0 - phi)


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of each channel, reflect-padded (SAG's degradation)."""
    half = (kernel_size - 1) * 0.5
    pdf = torch.exp(-0.5 * (torch.linspace(-half, half, kernel_size) / sigma).pow(2))
    k1 = (pdf / pdf.sum()).to(x.device, x.dtype)
    kernel = torch.outer(k1, k1).expand(x.shape[1], 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, [pad] * 4, mode="reflect"), kernel,
                                      groups=x.shape[1])


def sag_degrade(x0: torch.Tensor, probs: torch.Tensor, blur_sigma: float, threshold: float) -> torch.Tensor:
    """x0 blurred where the attention map (batch, heads, queries, keys)'s received attention (mean over heads,
    summed over queries) is above
    `threshold`; the map's tokens laid out on the mid block's grid, upsampled to the latent (nearest)."""
    b, _, lh, lw = x0.shape
    mask = probs.mean(1).sum(1) > threshold  # probs: (batch, heads, queries, keys)
    ratio = 2 ** (math.ceil(math.sqrt(lh * lw / probs.shape[-2])) - 1).bit_length()
    h, w = math.ceil(lh / ratio), math.ceil(lw / ratio)
    mask = mask.reshape(b, 1, h, w).to(x0.dtype)
    mask = torch.nn.functional.interpolate(mask, (lh, lw))
    return gaussian_blur(x0, 9, blur_sigma) * mask + x0 * (1 - mask)


@dataclass
class PassGuidance:
    """The pass's guidance changes (each settings dict as forge_scripts parses it, None when off) and the
    mid-block attention switches (pipeline/models/forge_patches.MidAttention) SAG and PAG drive."""

    levels: NoiseLevels
    dynthres: dict[str, Any] | None = None
    pag: dict[str, Any] | None = None
    sag: dict[str, Any] | None = None
    attention: Any = None

    def __post_init__(self) -> None:
        self.pag_scale = self.pag["scale"] if self.pag else 0.0

    @property
    def needs_uncond(self) -> bool:
        """The unconditional prediction is computed even at CFG 1 (Forge's disable_cfg1_optimization)."""
        return self.sag is not None or self.dynthres is not None

    def combine(self, x_in: torch.Tensor, t: Any, cond: Any, uncond: Any, u: torch.Tensor | None,
                c: torch.Tensor, cfg_scale: float, run_one: Callable[..., torch.Tensor]) -> torch.Tensor:
        """The guided output of one call from its uncond (None when not computed) and cond outputs.
        `run_one(x, t, conditioning, negative)` is one more plain UNet call."""
        i = self.levels.index(t)
        to_x0 = self.levels.to_x0
        c0 = to_x0(c, x_in, i)
        u0 = to_x0(u, x_in, i) if u is not None else None
        if self.dynthres is not None and u0 is not None:
            result = dynamic_threshold(c0, u0, cfg_scale, self.dynthres, self.levels.timesteps[i])
        else:
            result = c0 if u0 is None else u0 + cfg_scale * (c0 - u0)
        frac = self.levels.fraction(i)
        if self.pag is not None and self.pag_scale > 0 and self.pag["start_step"] <= frac <= self.pag["end_step"]:
            self.attention.identity = True
            try:
                perturbed = to_x0(run_one(x_in, t, cond, False), x_in, i)
            finally:
                self.attention.identity = False
            result = result + (c0 - perturbed) * self.pag_scale
            self.pag_scale -= self.pag["scale"] * self.pag["attenuation"] / 100.0
        maps: list[torch.Tensor] = []
        if self.attention is not None:
            maps, self.attention.maps = self.attention.maps, []
        if self.sag is not None and u0 is not None and maps and min(x_in.shape[-2:]) > 4:
            # the first recorded call holds the uncond rows first (the batched [uncond, cond] call, or the
            # uncond call of prompts whose chunk counts differ)
            degraded = sag_degrade(u0, maps[0][:u0.shape[0]], self.sag["blur_sigma"], self.sag["threshold"])
            noised = x_in.float() + math.sqrt(self.levels.alphas[i]) * (degraded - u0)
            self.attention.record = False
            try:
                predicted = to_x0(run_one(noised.to(x_in.dtype), t, uncond, True), noised, i)
            finally:
                self.attention.record = True
            result = result + (degraded - predicted) * self.sag["scale"]
        return self.levels.from_x0(result, x_in, i)

