"""Tiny random-weight upscaler models of every family, built once per session with fixed seeds."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from skimage import data as skdata
from spandrel.architectures.Compact import Compact
from spandrel.architectures.DAT import DAT
from spandrel.architectures.ESRGAN import ESRGAN
from spandrel.architectures.HAT import HAT
from spandrel.architectures.SCUNet import SCUNet
from spandrel.architectures.SwinIR import SwinIR

from upscalers import UpscalerRegistry


def _esrgan_new_layout(state: dict[str, torch.Tensor], scale: int) -> dict[str, torch.Tensor]:
    """Rename an old-layout RRDBNet state dict to the Real-ESRGAN (`conv_first`, `body.N.rdbM`) layout."""
    tail = {
        2: {3: "conv_up1", 5: "conv_hr", 7: "conv_last"},
        4: {3: "conv_up1", 6: "conv_up2", 8: "conv_hr", 10: "conv_last"},
    }
    blocks = max(int(m.group(1)) for k in state if (m := re.match(r"model\.1\.sub\.(\d+)\.RDB", k))) + 1
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", key):
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
        elif m := re.match(r"model\.1\.sub\.(\d+)\.(weight|bias)", key):
            assert int(m[1]) == blocks
            out[f"conv_body.{m[2]}"] = value
        elif m := re.match(r"model\.(\d+)\.(weight|bias)", key):
            index = int(m[1])
            out[f"{'conv_first' if index == 0 else tail[scale][index]}.{m[2]}"] = value
        else:
            raise AssertionError(key)
    return out


def _builders() -> dict[str, tuple[str, Callable[[], dict[str, torch.Tensor]]]]:
    """file stem -> (family folder, state dict builder)."""

    def sd(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}

    def rrdb(scale: int) -> ESRGAN:
        return ESRGAN(num_filters=8, num_blocks=1, scale=scale)

    return {
        "ESRGAN-x2-old": ("ESRGAN", lambda: sd(rrdb(2))),
        "ESRGAN-x4-old": ("ESRGAN", lambda: sd(rrdb(4))),
        "ESRGAN-x2-new": ("ESRGAN", lambda: _esrgan_new_layout(sd(rrdb(2)), 2)),
        "ESRGAN-x4-new": ("ESRGAN", lambda: _esrgan_new_layout(sd(rrdb(4)), 4)),
        "sub/RealESRGAN-x2plus": (
            "ESRGAN",
            lambda: sd(ESRGAN(in_nc=12, num_filters=8, num_blocks=1, scale=4, shuffle_factor=2)),
        ),
        "Compact-x4": ("RealESRGAN", lambda: sd(Compact(num_feat=8, num_conv=2, upscale=4))),
        "SwinIR 4x": (
            "SwinIR",
            lambda: sd(
                SwinIR(
                    embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=4,
                    upsampler="pixelshuffle", img_size=16,
                )
            ),
        ),
        "DAT-x2": (
            "DAT",
            lambda: sd(
                DAT(embed_dim=32, depth=[1], num_heads=[2], split_size=[2, 4], upscale=2, img_size=16)
            ),
        ),
        "HAT-x2": (
            "HAT",
            lambda: sd(
                HAT(
                    embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2, num_feat=8,
                    img_size=16, compress_ratio=3, squeeze_factor=3,
                )
            ),
        ),
        "SCUNet-1x": ("ScuNET", lambda: sd(SCUNet(dim=64, config=[1] * 7))),
    }


EXPECTED = {
    # stem: (architecture, scale)
    "ESRGAN-x2-old": ("ESRGAN", 2),
    "ESRGAN-x4-old": ("ESRGAN", 4),
    "ESRGAN-x2-new": ("ESRGAN", 2),
    "ESRGAN-x4-new": ("ESRGAN", 4),
    "RealESRGAN-x2plus": ("ESRGAN", 2),
    "Compact-x4": ("RealESRGAN Compact", 4),
    "SwinIR 4x": ("SwinIR", 4),
    "DAT-x2": ("DAT", 2),
    "HAT-x2": ("HAT", 2),
    "SCUNet-1x": ("SCUNet", 1),
}
"""Every fixture model exists as `<stem>.pth` and `<stem>-sf.safetensors`."""


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding every tiny model as .pth and .safetensors."""
    root = tmp_path_factory.mktemp("models")
    for index, (stem, (family, build)) in enumerate(_builders().items()):
        torch.manual_seed(1234 + index)
        state = build()
        target = root / family / stem
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, target.with_name(target.name + ".pth"))
        safetensors.torch.save_file(state, str(target.with_name(target.name + "-sf.safetensors")))
    (root / "ESRGAN" / "readme.txt").write_text("not a model")
    return root


@pytest.fixture(scope="session")
def registry(models_dir: Path) -> UpscalerRegistry:
    """One registry over the session models (cache big enough to keep everything loaded)."""
    return UpscalerRegistry(models_dir, max_cached_models=32)


@pytest.fixture()
def copy_models(models_dir: Path, tmp_path: Path) -> Callable[..., Path]:
    """Make a private models folder holding copies of the named fixture files."""

    def make(**files: str) -> Path:
        root = tmp_path / "models"
        for destination, source in files.items():
            target = root / destination
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(models_dir / source, target)
        root.mkdir(exist_ok=True)
        return root

    return make


def photo(name: str, width: int, height: int | None = None) -> Image.Image:
    """A natural photo from scikit-image, resized to width x height."""
    array = getattr(skdata, name)()
    image = Image.fromarray(np.asarray(array, dtype=np.uint8))
    if height is None:
        height = round(width * image.height / image.width)
    return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
