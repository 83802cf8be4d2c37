"""LDSR's denoiser: CompVis' `openaimodel.UNetModel` (no cross-attention; the low-resolution image is
concatenated to the noisy latent), rebuilt from a checkpoint's tensors.

Every shape (channels, levels, res blocks per level, where attention sits, scale-shift norm) is read from
the tensor names and sizes under `model.diffusion_model.`; only the attention head width is not stored in
the weights: it comes from `project.yaml` (`num_head_channels` / `num_heads`), else LDSR's 32.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UpscalerError


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (as the original)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps: [cos | sin] of t * 10000^(-i/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, scale_shift: bool) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(),
                                        nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(_norm(out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection: nn.Module = (nn.Identity() if out_channels == channels
                                           else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all positions; q, k, v interleaved per head in one 1x1 conv (the legacy order)."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        length = qkv.shape[-1]
        per_head = c // self.heads
        q, k, v = qkv.reshape(b * self.heads, per_head * 3, length).split(per_head, dim=1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out.transpose(1, 2).reshape(b, c, length)
        return (flat + self.proj_out(out)).reshape(b, c, height, width)


class Downsample(nn.Module):
    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Step(nn.ModuleList):
    """One entry of input_blocks / output_blocks: layers applied in order, res blocks with the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


@dataclass(frozen=True)
class UNetShape:
    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_levels: frozenset[int]
    """Levels (0 = full resolution) whose res blocks are followed by attention."""
    scale_shift: bool
    head_channels: int
    num_heads: int | None = None
    """A fixed head count (project.yaml's `num_heads`); None: channels // head_channels."""


def _block_ids(keys: set[str], prefix: str) -> list[int]:
    found = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return sorted(found)


def read_shape(sd: dict[str, torch.Tensor], head_channels: int, num_heads: int | None = None) -> UNetShape:
    """The UNet's hyper-parameters from its tensors (keys without the `model.diffusion_model.` prefix)."""
    keys = set(sd)
    try:
        conv_in = sd["input_blocks.0.0.weight"]
        model_channels, in_channels = conv_in.shape[0], conv_in.shape[1]
        out_channels = sd["out.2.weight"].shape[0]
        levels: list[list[int]] = [[]]
        attention: set[int] = set()
        scale_shift = False
        for i in _block_ids(keys, "input_blocks.")[1:]:
            if f"input_blocks.{i}.0.op.weight" in keys:
                levels.append([])
                continue
            out = sd[f"input_blocks.{i}.0.in_layers.2.weight"].shape[0]
            scale_shift = sd[f"input_blocks.{i}.0.emb_layers.1.weight"].shape[0] == 2 * out
            levels[-1].append(out)
            if f"input_blocks.{i}.1.qkv.weight" in keys:
                attention.add(len(levels) - 1)
    except KeyError as exc:
        raise UpscalerError(f"not an LDSR UNet: the tensor {exc.args[0]!r} is missing") from None
    counts = {len(level) for level in levels}
    if len(counts) != 1 or 0 in counts:
        raise UpscalerError("not an LDSR UNet: its levels have different numbers of res blocks")
    mult = tuple(level[0] // model_channels for level in levels)
    return UNetShape(in_channels, out_channels, model_channels, mult, counts.pop(), frozenset(attention),
                     scale_shift, head_channels, num_heads)


class UNet(nn.Module):
    """`UNetModel(x, t)` with concat conditioning already in `x` (latent channels then the LR image)."""

    def __init__(self, s: UNetShape) -> None:
        super().__init__()
        ch = s.model_channels
        emb = ch * 4
        self.model_channels = ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))

        def heads(channels: int) -> int:
            return s.num_heads or max(1, channels // s.head_channels)

        self.input_blocks = nn.ModuleList([Step([nn.Conv2d(s.in_channels, ch, 3, padding=1)])])
        skips = [ch]
        for level, mult in enumerate(s.channel_mult):
            for _ in range(s.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb, mult * s.model_channels, s.scale_shift)]
                ch = mult * s.model_channels
                if level in s.attention_levels:
                    layers.append(AttentionBlock(ch, heads(ch)))
                self.input_blocks.append(Step(layers))
                skips.append(ch)
            if level != len(s.channel_mult) - 1:
                self.input_blocks.append(Step([Downsample(ch, ch)]))
                skips.append(ch)
        self.middle_block = Step([ResBlock(ch, emb, ch, s.scale_shift), AttentionBlock(ch, heads(ch)),
                                  ResBlock(ch, emb, ch, s.scale_shift)])
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(s.channel_mult))[::-1]:
            for i in range(s.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), emb, s.model_channels * mult, s.scale_shift)]
                ch = s.model_channels * mult
                if level in s.attention_levels:
                    layers.append(AttentionBlock(ch, heads(ch)))
                if level and i == s.num_res_blocks:
                    layers.append(Upsample(ch, ch))
                self.output_blocks.append(Step(layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(),
                                 nn.Conv2d(s.model_channels, s.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(x.dtype))
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
