"""UNet patches behind Forge's FreeU, Self-Attention Guidance and Perturbed-Attention Guidance, installed for
one sampling pass through the per-pass patching layer (pipeline/models/patches: hooks and instance-level
forwards only, removed after the pass), so they compose with LoRA, tiled diffusion, the refiner and the
other patches (Hypertile, token merging, Deep Shrink).

- FreeU (Si et al. 2023, "v2" as Forge runs it): before each concatenation of the UNet's up path, where the
  hidden state `h` has 4x or 2x the model's base channels, the first half of `h`'s channels is scaled by
  (b - 1) * m + 1, m being the channel-mean of `h` min-max normalised per image; the skip `hsp` is filtered in
  Fourier space, its lowest frequencies (the centre 2x2 after fftshift) multiplied by s. Only on the steps
  whose fraction i / (steps - 1) lies within [start, end].
- The mid block's self-attention (`attn1` of its transformer blocks): SAG records the attention
  probabilities of the first block; PAG replaces the attention of every block by the identity (output =
  value), as Forge's "middle", 0 patches do."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pipeline.models.patches.blocks import output_block_patch
from pipeline.models.patches.layer import UNetPatcher
from pipeline.runtime.errors import InvalidRequest


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """x's centred (fftshifted) lowest 2*threshold x 2*threshold frequencies multiplied by `scale`."""
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = freq.shape[-2:]
    mask = torch.ones(freq.shape, device=x.device)
    mask[..., h // 2 - threshold:h // 2 + threshold, w // 2 - threshold:w // 2 + threshold] = scale
    out = torch.fft.ifftn(torch.fft.ifftshift(freq * mask, dim=(-2, -1)), dim=(-2, -1)).real
    return out.to(x.dtype)


def freeu_backbone(h: torch.Tensor, b: float) -> torch.Tensor:
    """The first half of h's channels scaled by (b - 1) * m + 1, m the per-image min-max normalised channel mean."""
    mean = h.mean(1, keepdim=True)
    flat = mean.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    m = (mean - lo) / (hi - lo)
    out = h.clone()
    half = h.shape[1] // 2
    out[:, :half] = h[:, :half] * ((b - 1) * m + 1)
    return out


def install_freeu(patcher: UNetPatcher, b1: float, b2: float, s1: float, s2: float,
                  active: Callable[[], bool]) -> None:
    """FreeU before every concatenation of the up path (blocks.output_block_patch), where `h` has 4x (b1,
    s1) or 2x (b2, s2) the UNet's base channels, while `active()`."""
    base = int(patcher.unet.config.block_out_channels[0])
    scales = {base * 4: (b1, s1), base * 2: (b2, s2)}

    def patch(h: torch.Tensor, hsp: torch.Tensor, _j: int) -> tuple[torch.Tensor, torch.Tensor]:
        scale = scales.get(int(h.shape[1]))
        if scale is None or not active():
            return h, hsp
        return freeu_backbone(h, scale[0]), fourier_filter(hsp, 1, scale[1])

    output_block_patch(patcher, patch)


def mid_self_attentions(unet: Any, what: str) -> list[Any]:
    """The `attn1` modules of the mid block's transformer blocks; a 400 when the UNet has none."""
    attentions = getattr(unet.mid_block, "attentions", None) or []
    found = [tb.attn1 for a in attentions for tb in getattr(a, "transformer_blocks", [])]
    if not found:
        raise InvalidRequest("alwayson_scripts", f"{what} needs self-attention in the UNet's mid block, which this "
                             "checkpoint does not have; send it disabled")
    return found


def _heads_split(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).permute(0, 2, 1, 3).reshape(b * heads, n, c // heads)


def _finish(attn: Any, out: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    out = attn.to_out[1](attn.to_out[0](out))
    if getattr(attn, "residual_connection", False):
        out = out + hidden
    return out / getattr(attn, "rescale_output_factor", 1.0)


def attention_with_probs(attn: Any, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention computed explicitly: (output, probabilities (batch*heads, tokens, tokens), float32)."""
    heads = int(attn.heads)
    q, k, v = (_heads_split(f(hidden), heads) for f in (attn.to_q, attn.to_k, attn.to_v))
    scale = q.shape[-1] ** -0.5
    probs = (torch.bmm(q.float(), k.float().transpose(1, 2)) * scale).softmax(dim=-1)
    out = torch.bmm(probs.to(v.dtype), v)
    b = hidden.shape[0]
    out = out.reshape(b, heads, -1, out.shape[-1]).permute(0, 2, 1, 3).reshape(b, -1, heads * out.shape[-1])
    return _finish(attn, out, hidden), probs


class MidAttention:
    """The switches of the mid block's self-attention for one pass: `record` (SAG) keeps each call's
    probabilities of the first block in `maps` (batch, heads, queries, keys); `identity` (PAG) makes every block's attention return its
    value projection."""

    def __init__(self) -> None:
        self.record = False
        self.identity = False
        self.maps: list[torch.Tensor] = []

    def install(self, patcher: UNetPatcher, what: str) -> None:
        for n, attn in enumerate(mid_self_attentions(patcher.unet, what)):
            def forward(original: Callable[..., Any], hidden: torch.Tensor, *args: Any, attn: Any = attn,
                        first: bool = n == 0, **kwargs: Any) -> torch.Tensor:
                if self.identity:
                    return _finish(attn, attn.to_v(hidden), hidden)
                if self.record and first and hidden.ndim == 3:
                    out, probs = attention_with_probs(attn, hidden)
                    self.maps.append(probs.reshape(hidden.shape[0], int(attn.heads), *probs.shape[-2:]))
                    return out
                return original(hidden, *args, **kwargs)

            patcher.wrap_forward(attn, forward)
