"""LDSR's first stage, decoding half: CompVis' `VQModelInterface.decode` (nearest codebook entry,
`post_quant_conv`, the convolutional `Decoder`), rebuilt from a checkpoint's tensors.

The encoder is never needed: A1111's LDSR encodes the bicubic-upscaled input only to learn the latent's
shape and starts sampling from noise, so the encoder's weights do not change a single output pixel.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UpscalerError


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(channels)
        self.conv1 = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(channels, out_channels, 1) if channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention with separate 1x1 q, k, v convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class UpsampleConv(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    def __init__(self, block: list[ResnetBlock], attn: list[AttnBlock],
                 upsample: UpsampleConv | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(block)
        self.attn = nn.ModuleList(attn)
        self.upsample = upsample


class Mid(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)


class Decoder(nn.Module):
    """`up[i]` is level i (0 = full resolution); levels run from the deepest up, as the original."""

    def __init__(self, sd: dict[str, torch.Tensor]) -> None:
        super().__init__()
        keys = set(sd)
        z_channels = sd["conv_in.weight"].shape[1]
        block_in = sd["conv_in.weight"].shape[0]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = Mid(block_in)
        count = 1 + max(int(m.group(1)) for k in keys if (m := re.match(r"up\.(\d+)\.", k)))
        levels: list[Level] = []
        for i in reversed(range(count)):
            blocks = 1 + max(int(m.group(1)) for k in keys if (m := re.match(rf"up\.{i}\.block\.(\d+)\.", k)))
            block: list[ResnetBlock] = []
            attn: list[AttnBlock] = []
            for j in range(blocks):
                out = sd[f"up.{i}.block.{j}.conv1.weight"].shape[0]
                block.append(ResnetBlock(block_in, out))
                block_in = out
                if f"up.{i}.attn.{j}.q.weight" in keys:
                    attn.append(AttnBlock(block_in))
            upsample = UpsampleConv(block_in) if f"up.{i}.upsample.conv.weight" in keys else None
            levels.insert(0, Level(block, attn, upsample))
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, sd["conv_out.weight"].shape[0], 3, padding=1)
        self.factor = 2 ** sum(1 for level in levels if level.upsample is not None)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            assert isinstance(level, Level)
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if level.upsample is not None:
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Codebook(nn.Module):
    """The quantizer: each latent vector replaced by its nearest entry (squared Euclidean distance)."""

    def __init__(self, entries: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(entries, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        table = self.embedding.weight
        dist = (flat**2).sum(1, keepdim=True) + (table**2).sum(1) - 2 * flat @ table.t()
        return table[dist.argmin(1)].reshape(b, h, w, c).permute(0, 3, 1, 2)


class VQDecoder(nn.Module):
    """Latent (B, embed_dim, h, w) -> image (B, 3, h*factor, w*factor) in [-1, 1] (not clamped)."""

    def __init__(self, sd: dict[str, torch.Tensor]) -> None:
        """`sd`: the `first_stage_model.` tensors without that prefix."""
        super().__init__()
        try:
            codebook = sd["quantize.embedding.weight"]
            self.quantize = Codebook(codebook.shape[0], codebook.shape[1])
            post = sd["post_quant_conv.weight"]
            self.post_quant_conv = nn.Conv2d(post.shape[1], post.shape[0], 1)
            decoder = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
            self.decoder = Decoder(decoder)
        except (KeyError, ValueError) as exc:
            raise UpscalerError(f"not an LDSR first stage (VQ autoencoder): {exc}") from None
        self.embed_dim = codebook.shape[1]
        self.factor = self.decoder.factor

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(self.quantize(z)))
