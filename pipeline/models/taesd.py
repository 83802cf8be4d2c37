"""TAESD, the tiny VAE that A1111 runs for the options `sd_vae_encode_method` / `sd_vae_decode_method`
"TAESD", read from the files A1111 keeps under `<models>/VAE-taesd`: `taesd_decoder.pth` /
`taesd_encoder.pth` (SD 1.x/2.x) and `taesdxl_decoder.pth` / `taesdxl_encoder.pth` (SDXL), each the state
dict of the network below (`torch.load(weights_only=True)`). Nothing is downloaded: without the file the
full VAE codes the images, the log says so once per file and the job's infotext says
`VAE Decoder: Full (TAESD fallback)` (or `VAE Encoder`); with it, `VAE Decoder: TAESD` as A1111 writes.

The network (TAESD's published layout): 3x3 convolutions of 64 channels in residual blocks
(conv-ReLU-conv-ReLU-conv plus the input, then ReLU). The decoder soft-clamps the latent (3 tanh(z/3)),
then conv + ReLU, three times [3 blocks, 2x nearest upsample, conv without bias], one block and a conv to
RGB in [0, 1]; the encoder is conv + block, three times [stride-2 conv without bias, 3 blocks], and a conv
to the 4 latent channels. Its latents are the scaled latents the samplers work in."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("hiresd.vae")
FILES = {("decoder", "sdxl"): "taesdxl_decoder.pth", ("encoder", "sdxl"): "taesdxl_encoder.pth",
         ("decoder", "sd"): "taesd_decoder.pth", ("encoder", "sd"): "taesd_encoder.pth"}
LABELS = {"decoder": "VAE Decoder", "encoder": "VAE Encoder"}
FALLBACK = "Full (TAESD fallback)"


def _conv(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class _Block(nn.Module):
    def __init__(self, n: int = 64) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(n, n), nn.ReLU(), _conv(n, n), nn.ReLU(), _conv(n, n))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class _SoftClamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def decoder(latent_channels: int = 4) -> nn.Sequential:
    layers: list[nn.Module] = [_SoftClamp(), _conv(latent_channels, 64), nn.ReLU()]
    for _ in range(3):
        layers += [_Block(), _Block(), _Block(), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False)]
    return nn.Sequential(*layers, _Block(), _conv(64, 3))


def encoder(latent_channels: int = 4) -> nn.Sequential:
    layers: list[nn.Module] = [_conv(3, 64), _Block()]
    for _ in range(3):
        layers += [_conv(64, 64, stride=2, bias=False), _Block(), _Block(), _Block()]
    return nn.Sequential(*layers, _conv(64, latent_channels))


class TinyVAEs:
    """The TAESD files of `folder`, loaded on first use and kept (a few MB each)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._nets: dict[str, nn.Module | None] = {}
        self._lock = threading.Lock()

    def get(self, kind: str, family: str) -> nn.Module | None:
        """The decoder or encoder ("decoder" / "encoder") for a model family, None without its file."""
        name = FILES[(kind, "sdxl" if family == "sdxl" else "sd")]
        with self._lock:
            if name not in self._nets:
                self._nets[name] = self._load(name, kind)
            return self._nets[name]

    def _load(self, name: str, kind: str) -> nn.Module | None:
        path = self.folder / name if self.folder is not None else None
        if path is None or not path.is_file():
            log.info("TAESD: no %s (A1111's file; nothing is downloaded): the full VAE is used and the "
                     "infotext says `%s: %s`", path or f"VAE-taesd/{name}", LABELS[kind], FALLBACK)
            return None
        try:
            net = decoder() if kind == "decoder" else encoder()
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # noqa: BLE001 - a broken file falls back, as a missing one does
            log.warning("TAESD: %s is not a TAESD %s state dict (%s); the full VAE is used", path, kind, exc)
            return None
        log.info("TAESD %s from %s", kind, path)
        return net.eval()

    def decode(self, net: nn.Module, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images (B, 3, H, W) in [0, 1], float32 on the CPU."""
        with self._lock, torch.inference_mode():
            net.to(latents.device)
            return net(latents.float()).clamp(0, 1).float().cpu()

    def encode(self, net: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> scaled float32 latents on `device`."""
        with self._lock, torch.inference_mode():
            net.to(device)
            return net(images.to(device).float()).float()
