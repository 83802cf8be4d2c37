"""ControlNet as residuals handed to the UNet call: no UNet module is patched.

Each model call, every unit active at this step runs its ControlNet on the UNet's own input (latent
channels only, for 9-channel inpainting checkpoints), timestep, prompt context and (SDXL) vector
conditioning, with its hint image. Its residuals (one per UNet encoder output, then the mid block's) are
scaled and summed over the units, and the UNet adds them to its skip connections and mid block
(diffusers' `down_block_additional_residuals` / `mid_block_additional_residual`), which is where the
extension's hooked UNet adds them.

Scaling, as sd-webui-controlnet's `hook.py` does it:
- Balanced: every residual times `weight`.
- "My prompt is more important" and "ControlNet is more important" (its `soft_injection`): residual i of
  the 13 (SD 1.x/2.x) times `weight * 0.825 ** (12 - i)`, the mid block's (i = 12) at full weight; SDXL
  takes the first 10 of those 13 factors for its 10 residuals. The hires pass of a canny or mlsd unit is
  soft the same way.
- "ControlNet is more important" (its `cfg_injection`) adds the residuals to the conditional rows only, so
  that CFG amplifies the control; the other modes add them to both halves.
- The unit acts at the steps where `guidance_start <= step / steps <= guidance_end`.
- A shuffle model (the extension: "shuffle" in the file name) pools its residuals to their spatial means
  and adds them to the conditional rows only (its `global_average_pooling`).

T2I-Adapters (`adapter.T2IAdapter`) read the hint only: their 4 feature maps are computed once per pass
and call size, weighted by `weight` (soft modes: `weight * (0.25, 0.62, 0.825, 1.0)`), conditional rows
only under "ControlNet is more important", and added inside the UNet's encoder where the extension adds
them (after the last block of each level, before its downsampling: diffusers'
`down_intrablock_additional_residuals`), so that the skip connections carry them too."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.models.controlnet import adapter

SOFT_BASE = 0.825


def residual_scales(weight: float, soft: bool, sdxl: bool) -> list[float]:
    """The factor of each residual (zip with the ControlNet's outputs: shorter lists truncate, as the
    extension's zip does for architectures with fewer blocks)."""
    scales = [weight * SOFT_BASE ** float(12 - i) for i in range(13)] if soft else [weight] * 13
    return scales[:10] if sdxl else scales


def adapter_scales(weight: float, soft: bool) -> list[float]:
    """The factor of each T2I-Adapter feature, as the extension's hook."""
    return [weight * f for f in adapter.SOFT_FACTORS] if soft else [weight] * adapter.LEVELS


@dataclass
class Restore:
    """inpaint_only's blend, as the extension's hook does it after the UNet: the clean-latent prediction
    x0 = sqrt(1/a) x_t - sqrt(1/a - 1) eps is kept where `mask` (latent size, 1 = repaint) is 0 and
    replaced by `latent` (the VAE-encoded picture), turned back into eps, and mixed with the UNet's
    output by `weight` (clamped to 0..1). `alphas_cumprod`: the training schedule, indexed by the rounded
    timestep."""

    latent: torch.Tensor
    mask: torch.Tensor
    alphas_cumprod: torch.Tensor
    weight: float

    def __call__(
        self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor, cond_rows: torch.Tensor
    ) -> torch.Tensor:
        xt = x[:, : self.latent.shape[1]].float()
        latent, mask = _per_row(self.latent, xt), _per_row(self.mask, xt)
        s1, s2 = _x0_scales(self.alphas_cumprod, t, xt.device)
        mask = mask.to(xt.device, xt.dtype)
        x0 = (s1 * xt - s2 * out.float()) * mask + latent.to(xt.device, xt.dtype) * (1 - mask)
        return _mix_eps((s1 * xt - x0) / s2, out, self.weight)


def _per_row(t: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """`t` (one row per image) repeated over the call's rows (its cond / uncond halves)."""
    return t if t.shape[0] == xt.shape[0] else t.repeat(xt.shape[0] // t.shape[0], 1, 1, 1)


def _x0_scales(alphas_cumprod: torch.Tensor, t: torch.Tensor, device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(1/a) and sqrt(1/a - 1) at the call's (rounded) timesteps: x0 = s1 x_t - s2 eps."""
    idx = torch.round(t.float()).long().clamp(0, len(alphas_cumprod) - 1)
    a = alphas_cumprod.to(device)[idx].float().reshape(-1, 1, 1, 1)
    return torch.sqrt(1.0 / a), torch.sqrt(1.0 / a - 1.0)


def _mix_eps(eps: torch.Tensor, out: torch.Tensor, weight: float) -> torch.Tensor:
    """The hook's eps mixed with the UNet's output by `weight` (clamped to 0..1)."""
    w = max(0.0, min(1.0, float(weight)))
    return (eps * w + out.float() * (1 - w)).to(out.dtype)


def _box_blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """The extension's blur: a (2k+1)-wide box mean over edge-replicated borders."""
    y = torch.nn.functional.pad(x, (k, k, k, k), mode="replicate")
    return torch.nn.functional.avg_pool2d(y, (2 * k + 1, 2 * k + 1), stride=(1, 1))


@dataclass
class ColorFix:
    """tile_colorfix(+sharp), as the extension's hook does it after the UNet: the clean-latent prediction
    keeps its detail but takes the low frequencies (box blur of radius `k`) of `latent` (the encoded
    picture); `sharp` (detail weight, +sharp only) blurs the negative rows' prediction toward less detail;
    then back to eps, mixed with the UNet's output by `weight` (clamped to 0..1)."""

    latent: torch.Tensor
    k: int
    sharp: float | None
    alphas_cumprod: torch.Tensor
    weight: float

    def __call__(
        self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor, cond_rows: torch.Tensor
    ) -> torch.Tensor:
        xt = x[:, : self.latent.shape[1]].float()
        latent = _per_row(self.latent, xt).to(xt.device, xt.dtype)
        s1, s2 = _x0_scales(self.alphas_cumprod, t, xt.device)
        x0_prd = s1 * xt - s2 * out.float()
        x0 = x0_prd - _box_blur(x0_prd, self.k) + _box_blur(latent, self.k)
        if self.sharp is not None:
            mark = cond_rows.to(xt.device, xt.dtype).view(-1, 1, 1, 1)
            neg = self.sharp * _box_blur(x0, self.k) + (1 - self.sharp) * x0
            x0 = mark * x0 + (1 - mark) * neg
        return _mix_eps((s1 * xt - x0) / s2, out, self.weight)


@dataclass
class ActiveControl:
    """One unit as a pass uses it: its network, hint (1, C, H, W) in [0, 1] at the pass's pixel size, the
    per-residual factors, whether it acts on the conditional rows only, and its step window."""

    net: Any
    hint: torch.Tensor
    scales: list[float]
    cond_only: bool
    start: float = 0.0
    end: float = 1.0
    pool: bool = False  # global average pooling (shuffle models): spatial means, prompt rows only
    post: Any = None  # Restore (inpaint_only) or ColorFix (tile_colorfix): applied to the UNet's output
    _batched: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _features: dict[tuple[Any, ...], list[torch.Tensor]] = field(default_factory=dict, repr=False)

    def acts_at(self, fraction: float) -> bool:
        return self.start <= fraction <= self.end

    def hint_for(self, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The hint for a model call of `batch` rows: one hint for all, or one per image repeated over the
        call's halves (negative rows first, then prompt rows, each in image order)."""
        if batch not in self._batched:
            n = self.hint.shape[0]
            hint = self.hint.to(device, dtype)
            self._batched[batch] = (
                hint.expand(batch, -1, -1, -1).contiguous() if n == 1 else hint.repeat(batch // n, 1, 1, 1)
            )
        return self._batched[batch]


class ControlResiduals:
    """The per-call residuals of a pass's units. The loop calls `at_step(step, steps)` before each model
    call (step counted from 0), then the guided model calls the object with the UNet's arguments."""

    def __init__(self, units: Sequence[ActiveControl], placement: Any = None):
        """`placement`: the checkpoint's memory-mode placement (--medvram / --lowvram), when it has one: the
        ControlNets then wait on its offload device and each runs alone on the compute device (the UNet's
        running part moves out first, and back in with the UNet's next forward)."""
        self.units = list(units)
        self.fraction = 0.0
        self.placement = placement

    def at_step(self, step: int, steps: int) -> None:
        self.fraction = step / max(1, steps)

    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        unet_kwargs: dict[str, Any],
        cond_rows: torch.Tensor,
    ) -> dict[str, Any]:
        """UNet keyword arguments adding the active units' residuals; {} when none acts. `cond_rows` (B,)
        is 1 for rows conditioned on the prompt, 0 for the negative prompt's."""
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        intra: list[torch.Tensor] | None = None
        for unit in self.units:
            if not unit.acts_at(self.fraction):
                continue
            net = unit.net
            if isinstance(net, adapter.T2IAdapter):
                feats = self._adapter(unit, x, cond_rows)
                intra = feats if intra is None else [a + b for a, b in zip(intra, feats)]
                continue
            x_in = x[:, : int(net.config.in_channels)]
            hint = unit.hint_for(x.shape[0], x.device, x.dtype)
            if self.placement is not None:
                self.placement.release()
                net.to(self.placement.compute)
            res_down, res_mid = net(
                x_in,
                t,
                encoder_hidden_states=context,
                controlnet_cond=hint,
                added_cond_kwargs=unet_kwargs.get("added_cond_kwargs"),
                return_dict=False,
            )
            if self.placement is not None:
                net.to(self.placement.offload)
            outs = [*res_down, res_mid]
            cond_only = unit.cond_only or unit.pool
            mark = cond_rows.to(x.device, x.dtype).view(-1, 1, 1, 1) if cond_only else None
            scaled = []
            for r, s in zip(outs, unit.scales):
                r = r * s
                r = r * mark if mark is not None else r
                scaled.append(torch.mean(r, dim=(2, 3), keepdim=True) if unit.pool else r)
            if len(scaled) < len(outs):  # more residuals than factors: the extension leaves them out
                scaled += [torch.zeros_like(r) for r in outs[len(scaled) :]]
            if down is None:
                down, mid = scaled[:-1], scaled[-1]
            else:
                down = [a + b for a, b in zip(down, scaled[:-1])]
                mid = mid + scaled[-1]
        out: dict[str, Any] = {}
        if down is not None:
            out.update(down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid)
        if intra is not None:  # a new list each call: the UNet pops from it
            out["down_intrablock_additional_residuals"] = list(intra)
        return out

    def _adapter(self, unit: ActiveControl, x: torch.Tensor, cond_rows: torch.Tensor) -> list[torch.Tensor]:
        """A T2I-Adapter unit's weighted features for this call (the network runs once per call shape)."""
        net = unit.net
        key = (x.shape, x.device, x.dtype)
        if key not in unit._features:
            hint = unit.hint_for(x.shape[0], x.device, x.dtype)
            if self.placement is not None:
                self.placement.release()
                net.to(self.placement.compute)
            feats = adapter.aligned(net(hint), adapter.feature_sizes(net.arch.family, *x.shape[-2:]))
            if self.placement is not None:
                net.to(self.placement.offload)
            unit._features[key] = feats
        feats = unit._features[key]
        cond_only = unit.cond_only or unit.pool
        mark = cond_rows.to(x.device, x.dtype).view(-1, 1, 1, 1) if cond_only else None
        out = []
        for f, s in zip(feats, unit.scales):
            f = f * s
            f = f * mark if mark is not None else f
            out.append(torch.mean(f, dim=(2, 3), keepdim=True) if unit.pool else f)
        return out

    def after(
        self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor, cond_rows: torch.Tensor
    ) -> torch.Tensor:
        """The colour-fix and inpaint_only units' blends of the UNet's output (at every step, as the
        extension's hook: colour fixes first, then the inpaint restores)."""
        for kind in (ColorFix, Restore):
            for unit in self.units:
                if isinstance(unit.post, kind):
                    out = unit.post(out, x, t, cond_rows)
        return out
