"""TAESD from A1111's files (`<models>/VAE-taesd`): the state-dict layout of the published networks, checked
against the layers written out with torch's functional ops; missing files fall back with one log line."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.models.taesd import TinyVAEs, decoder, encoder

BLOCKS_DEC = (3, 4, 5, 8, 9, 10, 13, 14, 15, 18)
BLOCKS_ENC = (1, 3, 4, 5, 7, 8, 9, 11, 12, 13)


def _random_state(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in net.state_dict().items()}


def _block(x: torch.Tensor, s: dict[str, torch.Tensor], i: int) -> torch.Tensor:
    y = F.relu(F.conv2d(x, s[f"{i}.conv.0.weight"], s[f"{i}.conv.0.bias"], padding=1))
    y = F.relu(F.conv2d(y, s[f"{i}.conv.2.weight"], s[f"{i}.conv.2.bias"], padding=1))
    y = F.conv2d(y, s[f"{i}.conv.4.weight"], s[f"{i}.conv.4.bias"], padding=1)
    return F.relu(y + x)


def _decode_reference(s: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    x = torch.tanh(z / 3) * 3
    x = F.relu(F.conv2d(x, s["1.weight"], s["1.bias"], padding=1))
    for first in (3, 8, 13):
        for i in range(first, first + 3):
            x = _block(x, s, i)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = F.conv2d(x, s[f"{first + 4}.weight"], None, padding=1)
    x = _block(x, s, 18)
    return F.conv2d(x, s["19.weight"], s["19.bias"], padding=1)


def _encode_reference(s: dict[str, torch.Tensor], img: torch.Tensor) -> torch.Tensor:
    x = F.conv2d(img, s["0.weight"], s["0.bias"], padding=1)
    x = _block(x, s, 1)
    for conv in (2, 6, 10):
        x = F.conv2d(x, s[f"{conv}.weight"], None, stride=2, padding=1)
        for i in range(conv + 1, conv + 4):
            x = _block(x, s, i)
    return F.conv2d(x, s["14.weight"], s["14.bias"], padding=1)


def test_the_state_dict_layout_is_taesds() -> None:
    keys = set(decoder().state_dict())
    assert {"1.weight", "1.bias", "7.weight", "19.weight", "3.conv.0.weight", "18.conv.4.bias"} <= keys
    assert "7.bias" not in keys and len(keys) == 2 + 3 + 2 + 10 * 6
    enc = set(encoder().state_dict())
    assert {"0.weight", "2.weight", "14.weight", "13.conv.4.weight"} <= enc and "2.bias" not in enc


def test_tiny_vaes_from_files_match_the_functional_reference(tmp_path: Path) -> None:
    folder = tmp_path / "VAE-taesd"
    folder.mkdir()
    dec, enc = _random_state(decoder(), 1), _random_state(encoder(), 2)
    torch.save(dec, folder / "taesd_decoder.pth")
    torch.save(enc, folder / "taesdxl_encoder.pth")
    tiny = TinyVAEs(folder)
    z = torch.randn(1, 4, 5, 6, generator=torch.Generator().manual_seed(3))
    got = tiny.decode(tiny.get("decoder", "sd1"), z)
    assert got.shape == (1, 3, 40, 48)
    assert torch.allclose(got, _decode_reference(dec, z).clamp(0, 1), atol=1e-5)
    img = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(4))
    lat = tiny.encode(tiny.get("encoder", "sdxl"), img, torch.device("cpu"))
    assert lat.shape == (1, 4, 4, 5)
    assert torch.allclose(lat, _encode_reference(enc, img), atol=1e-5)


def test_a_missing_file_is_none_with_one_log_line(tmp_path: Path, caplog) -> None:
    tiny = TinyVAEs(tmp_path / "VAE-taesd")
    with caplog.at_level(logging.INFO, logger="hiresd.vae"):
        assert tiny.get("decoder", "sdxl") is None and tiny.get("decoder", "sdxl") is None
    lines = [r.getMessage() for r in caplog.records if "taesdxl_decoder.pth" in r.getMessage()]
    assert len(lines) == 1 and "Full (TAESD fallback)" in lines[0]
