"""T2I-Adapters (TencentARC's full adapters), read from their tensors and run as sd-webui-controlnet runs
them (its `scripts/adapter.py` `Adapter`, written here in plain torch, not copied).

Two layouts arrive in `models/ControlNet/`:
    original (TencentARC, what the extension loads)   `conv_in`, `body.K.{in_conv,block1,block2}`, K over
                                                      levels x blocks; `body.K.down_opt.op` when the
                                                      downsampling is a strided conv (else an average pool)
    diffusers (`T2IAdapter`)                          `adapter.conv_in`, `adapter.body.L.in_conv`,
                                                      `adapter.body.L.resnets.J.{block1,block2}`
The diffusers layout is renamed to the original one (body.L.resnets.J -> body.(L * blocks + J)), as the
extension does. What the tensors say:
    input channels after the pixel unshuffle    conv_in columns: 64 x hint channels (SD 1.x, unshuffle
                                                 by 8) or 256 x hint channels (SDXL, by 16); a 1-channel
                                                 (sketch) adapter reads the hint's first channel
    widths of the 4 levels, blocks per level    body.K.block1 rows
    kernel sizes                                 block2's and in_conv's weights
The levels halve the size at levels 1, 2, 3 (SD 1.x) or at level 2 only (SDXL), as the extension's
`Adapter`.

Light adapters (`t2iadapter_color_sd14v1`; the extension's `Adapter_light`, diffusers' `LightAdapter`):
`body.L.{in_conv, body.J.{block1,block2}, out_conv}` (diffusers: `adapter.body.L.resnets.J`), one entry
per level: average-pool halving from level 1 on, a 1x1 conv to a quarter of the level's width, resnet
blocks of two 3x3 convs, a 1x1 conv out; widths from out_conv rows, blocks per level counted (the
extension fixes 320..1280 and 4). Style adapters (CLIP vision) are refused clearly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.runtime.errors import ModelLoadError

# the extension's soft weights of the 4 features ("My prompt is more important", "ControlNet is more
# important", and the hires pass of canny / mlsd units)
SOFT_FACTORS = (0.25, 0.62, 0.825, 1.0)
LEVELS = 4


@dataclass(frozen=True)
class AdapterArch:
    hint_channels: int  # 3, or 1 for sketch adapters
    unshuffle: int  # 8 (SD 1.x) or 16 (SDXL)
    channels: tuple[int, ...]
    blocks: int  # resnet blocks per level
    ksize: int  # block2's kernel
    in_ksize: int  # in_conv's kernel (levels whose width changes)
    conv_down: bool  # strided conv downsampling (down_opt.op) instead of an average pool
    light: bool = False

    @property
    def family(self) -> str:
        return "sdxl" if self.unshuffle == 16 else "sd1"

    @property
    def down_levels(self) -> tuple[int, ...]:
        return (2,) if self.family == "sdxl" else (1, 2, 3)


def is_light(keys: Sequence[str]) -> bool:
    return any(k.endswith(".out_conv.weight") for k in keys)


def _read_light(s: Mapping[str, tuple[int, ...]], path: str) -> AdapterArch:
    if any(len(s.get(f"body.{i}.out_conv.weight", ())) != 4 for i in range(LEVELS)) or len(
        s.get("body.0.in_conv.weight", ())
    ) != 4:
        raise ModelLoadError(path, f"a light T2I-Adapter without {LEVELS} levels of in_conv / out_conv weights")
    cin = s["body.0.in_conv.weight"][1]
    if cin not in (64, 192):
        raise ModelLoadError(path, f"light T2I-Adapter input of {cin} channels: expected 64 or 192 (SD 1.x)")
    blocks = 0
    while f"body.0.body.{blocks}.block1.weight" in s:
        blocks += 1
    return AdapterArch(
        hint_channels=cin // 64,
        unshuffle=8,
        channels=tuple(s[f"body.{i}.out_conv.weight"][0] for i in range(LEVELS)),
        blocks=blocks,
        ksize=3,
        in_ksize=1,
        conv_down=False,
        light=True,
    )


def to_original(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Tensors (or shapes) under the original layout's names."""
    body = {k.removeprefix("adapter."): v for k, v in sd.items()}
    if not any(".resnets." in k for k in body):
        return body
    if is_light(list(body)):
        return {k.replace(".resnets.", ".body."): v for k, v in body.items()}
    per = 1 + max(int(k.split(".")[3]) for k in body if k.startswith("body.") and ".resnets." in k)
    out: dict[str, Any] = {}
    for key, value in body.items():
        parts = key.split(".")
        if parts[0] == "body" and parts[2] == "resnets":
            out[f"body.{int(parts[1]) * per + int(parts[3])}." + ".".join(parts[4:])] = value
        elif parts[0] == "body":
            out[f"body.{int(parts[1]) * per}." + ".".join(parts[2:])] = value
        else:
            out[key] = value
    return out


def read(shapes: Mapping[str, Sequence[int]], path: str) -> AdapterArch:
    """The architecture of an adapter file's {name: shape} (either layout)."""
    s = {k: tuple(int(x) for x in v) for k, v in to_original(shapes).items()}
    if is_light(list(s)):
        return _read_light(s, path)
    if any(len(s.get(k, ())) != 4 for k in ("conv_in.weight", "body.0.block1.weight", "body.0.block2.weight")):
        raise ModelLoadError(path, "a T2I-Adapter file without 4-d conv_in / body.0.block1 / block2 weights")
    cin = s["conv_in.weight"][1]
    unshuffle = 16 if cin in (256, 768) else 8 if cin in (64, 192) else 0
    if not unshuffle:
        raise ModelLoadError(
            path, f"T2I-Adapter input of {cin} channels: expected 64 or 192 (SD 1.x), 256 or 768 (SDXL)"
        )
    n = 0
    while f"body.{n}.block1.weight" in s:
        n += 1
    if n % LEVELS:
        raise ModelLoadError(path, f"T2I-Adapter with {n} blocks: not {LEVELS} levels of equal depth")
    blocks = n // LEVELS
    channels = tuple(s[f"body.{i * blocks}.block1.weight"][0] for i in range(LEVELS))
    if s["conv_in.weight"][0] != channels[0]:
        raise ModelLoadError(path, "T2I-Adapter: conv_in width differs from the first level's")
    in_conv = next((v for k, v in sorted(s.items()) if k.endswith(".in_conv.weight")), None)
    return AdapterArch(
        hint_channels=cin // (unshuffle * unshuffle),
        unshuffle=unshuffle,
        channels=channels,
        blocks=blocks,
        ksize=s["body.0.block2.weight"][2],
        in_ksize=in_conv[2] if in_conv else 1,
        conv_down=any(k.endswith("down_opt.op.weight") for k in s),
    )


class _Block(nn.Module):
    """One resnet block: optional downsampling, in_conv where the width changes, then x + conv(relu(conv x))."""

    def __init__(self, cin: int, cout: int, down: bool, arch: AdapterArch):
        super().__init__()
        if down:
            self.down_opt = _Down(cin, arch.conv_down)
        self.down = down
        self.in_conv = nn.Conv2d(cin, cout, arch.in_ksize, 1, arch.in_ksize // 2) if cin != cout else None
        self.block1 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.block2 = nn.Conv2d(cout, cout, arch.ksize, 1, arch.ksize // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = self.down_opt(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return x + self.block2(torch.relu(self.block1(x)))


class _Down(nn.Module):
    def __init__(self, channels: int, conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, 2, 1) if conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class _LightLevel(nn.Module):
    """A light adapter's level: average-pool halving (levels 1..), 1x1 in, resnet blocks, 1x1 out."""

    def __init__(self, cin: int, cout: int, blocks: int, down: bool):
        super().__init__()
        self.down = down
        self.in_conv = nn.Conv2d(cin, cout // 4, 1)
        self.body = nn.Sequential(*[_LightBlock(cout // 4) for _ in range(blocks)])
        self.out_conv = nn.Conv2d(cout // 4, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = torch.nn.functional.avg_pool2d(x, 2, 2)
        return self.out_conv(self.body(self.in_conv(x)))


class _LightBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.block2 = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block2(torch.relu(self.block1(x)))


class T2IAdapter(nn.Module):
    """hint (B, 3, H, W) in [0, 1] -> 4 feature maps (one per level)."""

    def __init__(self, arch: AdapterArch):
        super().__init__()
        self.arch = arch
        ch = arch.channels
        self.unshuffle = nn.PixelUnshuffle(arch.unshuffle)
        if arch.light:
            cin = arch.hint_channels * arch.unshuffle**2
            self.body = nn.ModuleList(
                [_LightLevel(cin if i == 0 else ch[i - 1], ch[i], arch.blocks, i > 0) for i in range(LEVELS)]
            )
            return
        self.conv_in = nn.Conv2d(arch.hint_channels * arch.unshuffle**2, ch[0], 3, 1, 1)
        body = []
        for i in range(LEVELS):
            for r in range(arch.blocks):
                cin = ch[i - 1] if r == 0 and i > 0 else ch[i]
                body.append(_Block(cin, ch[i], r == 0 and i in arch.down_levels, arch))
        self.body = nn.ModuleList(body)

    def forward(self, hint: torch.Tensor) -> list[torch.Tensor]:
        if self.arch.light:  # the extension hands it the whole hint
            x = self.unshuffle(hint[:, : self.arch.hint_channels])
            features = []
            for level in self.body:
                x = level(x)
                features.append(x)
            return features
        x = self.conv_in(self.unshuffle(hint[:, : self.arch.hint_channels]))
        features = []
        for i in range(LEVELS):
            for r in range(self.arch.blocks):
                x = self.body[i * self.arch.blocks + r](x)
            features.append(x)
        return features


def build(arch: AdapterArch, tensors: Mapping[str, torch.Tensor], path: str) -> T2IAdapter:
    net = T2IAdapter(arch)
    try:
        net.load_state_dict(to_original(tensors), strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            path, f"the tensors do not fit the T2I-Adapter read from them: {str(exc).splitlines()[0]}"
        ) from exc
    return net


def check_base(arch: AdapterArch, base_unet: Mapping[str, Any], path: str) -> None:
    """The features must have the UNet's widths at the levels they are added to."""
    widths = tuple(int(w) for w in base_unet.get("block_out_channels", ()))
    n = min(len(widths), LEVELS if arch.family == "sd1" else 3)
    if tuple(arch.channels[:n]) != widths[:n]:
        raise ModelLoadError(
            path, f"the T2I-Adapter's widths {arch.channels} do not fit the checkpoint's UNet {widths}"
        )


def feature_sizes(family: str, height: int, width: int) -> list[tuple[int, int]]:
    """The UNet's sizes where the features are added (its strided convs: ceil halving), for a latent."""

    def half(s: tuple[int, int]) -> tuple[int, int]:
        return (s[0] + 1) // 2, (s[1] + 1) // 2

    s0 = (height, width)
    if family == "sdxl":
        return [half(s0), half(s0), half(half(s0))]
    return [s0, half(s0), half(half(s0)), half(half(half(s0)))]


def aligned(features: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """The features at the UNet's sizes (nearest resize where they differ, as the extension's
    `aligned_adding`); the ones no UNet level takes are dropped."""
    out = []
    for f, size in zip(features, sizes):
        if tuple(f.shape[-2:]) != size and (f.shape[-2] > 1 or f.shape[-1] > 1):
            f = torch.nn.functional.interpolate(f, size=size, mode="nearest")
        out.append(f)
    return out
