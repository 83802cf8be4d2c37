"""Live previews for `/progress` `current_image`, by A1111's option `show_progress_type`:

- "Approx cheap": a linear latent-to-RGB approximation (no weights).
- "Approx NN" (A1111's default): A1111's small convolutional approximation, read from the file A1111 keeps
  it in, `<models>/VAE-approx/model.pt` (SD 1.x/2.x) or `vaeapprox-sdxl.pt` (SDXL), as its state dict
  (`torch.load(weights_only=True)`). Nothing is downloaded: without the file the preview is "Approx cheap".
- "TAESD": the TAESD decoder of `<models>/VAE-taesd` (pipeline/models/taesd.py), when its file is there.
- "Full": served as "Approx cheap" (the full VAE stays off the progress path, which runs beside the job).

A batch is previewed as a grid of every image's preview while option `show_progress_grid` is on (A1111's
default; modules/shared_state.py `do_set_current_image`), as its first image's preview when it is off.

Every fallback is said once per method and file in the log; the images of a job are never affected."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pipeline.grids import image_grid

log = logging.getLogger("hiresd.preview")
CHEAP = "Approx cheap"
APPROX_NN = "Approx NN"
TAESD = "TAESD"
APPROX_FILES = {"sdxl": "vaeapprox-sdxl.pt"}  # any other family: model.pt
_told: set[str] = set()
_told_lock = threading.Lock()

# Per-channel RGB contributions of the SD 1.x/2.x and SDXL latent spaces (widely used approximations).
_SD1 = torch.tensor([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264],
                     [-0.184, -0.271, -0.473]])
_SDXL = torch.tensor([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
                      [-0.3165, -0.2492, -0.2188]])
_SDXL_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])


def _tell_once(key: str, message: str, *args: object) -> None:
    with _told_lock:
        if key in _told:
            return
        _told.add(key)
    log.info(message, *args)


def preview_fallback(method: str | None) -> None:
    """Log once that live previews of "Full" are served with the linear approximation (Approx NN and
    TAESD say so themselves when their file is missing)."""
    if method and method not in (CHEAP, APPROX_NN, TAESD):
        _tell_once(method, "show_progress_type %r: live previews use %r here (no %s decoder on the progress "
                   "path); the images are not affected", method, CHEAP, method)


def _to_image(rgb: torch.Tensor) -> Image.Image:
    """A (3, h, w) picture in [-1, 1] as an RGB image."""
    arr = ((rgb.float() + 1) / 2).clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr, "RGB")


def latent_preview(latents: torch.Tensor, family: str) -> Image.Image:
    """First image of a (B, 4, h, w) latent batch as a small RGB picture (8x smaller than the output)."""
    z = latents[0].detach().float().cpu()
    if z.shape[0] != 4:
        z = z[:4]
    factors, bias = (_SDXL, _SDXL_BIAS) if family == "sdxl" else (_SD1, torch.zeros(3))
    return _to_image(torch.einsum("chw,cr->rhw", z, factors) + bias[:, None, None])


class ApproxNN(nn.Module):
    """A1111's "Approx NN" decoder: the latent doubled in size (nearest), padded by 11, then eight 'valid'
    convolutions (7x7, 5x5, then 3x3; 4 -> 8 -> 16 -> 32 -> 64 -> 32 -> 16 -> 8 -> 3 channels), each
    followed by leaky ReLU 0.1; the output is a picture in [-1, 1] at a quarter of the image size."""

    WIDTHS = (8, 16, 32, 64, 32, 16, 8, 3)
    KERNELS = (7, 5, 3, 3, 3, 3, 3, 3)
    PAD = 11

    def __init__(self, latent_channels: int = 4) -> None:
        super().__init__()
        chans = (latent_channels, *self.WIDTHS)
        for i, k in enumerate(self.KERNELS):
            setattr(self, f"conv{i + 1}", nn.Conv2d(chans[i], chans[i + 1], (k, k)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, (x.shape[2] * 2, x.shape[3] * 2))
        x = F.pad(x, (self.PAD,) * 4)
        for i in range(len(self.KERNELS)):
            x = F.leaky_relu(getattr(self, f"conv{i + 1}")(x), 0.1)
        return x


class Previews:
    """The preview decoders of a server: the Approx NN files of `approx_dir`, loaded on first use and kept,
    and `tiny_vae` (models/taesd.TinyVAEs, or None) for "TAESD"."""

    def __init__(self, approx_dir: Path | None, tiny_vae: Any = None) -> None:
        self.approx_dir = approx_dir
        self.tiny_vae = tiny_vae
        self._nets: dict[str, ApproxNN | None] = {}
        self._lock = threading.Lock()

    def approx_nn(self, family: str) -> ApproxNN | None:
        name = APPROX_FILES.get(family, "model.pt")
        with self._lock:
            if name in self._nets:
                return self._nets[name]
            net = None
            path = self.approx_dir / name if self.approx_dir is not None else None
            if path is not None and path.is_file():
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True)
                    net = ApproxNN()
                    net.load_state_dict(state)
                    net.eval()
                    log.info("live previews: Approx NN from %s", path)
                except Exception as exc:  # noqa: BLE001 - a broken preview file must not fail a job
                    log.warning("live previews: %s is not an Approx NN state dict (%s); using %r", path, exc,
                                CHEAP)
                    net = None
            else:
                log.info("live previews: Approx NN needs %s (A1111's file; nothing is downloaded); using %r",
                         path or f"VAE-approx/{name}", CHEAP)
            self._nets[name] = net
            return net

    def render(self, latents: torch.Tensor, family: str, method: str | None,
               grid: dict[str, Any] | None = None) -> Image.Image:
        """The preview of the first image of `latents` by `method` (option `show_progress_type`); with
        `grid` (the job's options, given while `show_progress_grid` is on) a grid of every image's preview,
        laid out as A1111's `samples_to_image_grid` lays it out (`images.image_grid` with batch size 1)."""
        if grid is None:
            return self._render_one(latents[:1], family, method)
        pictures = [self._render_one(latents[i:i + 1], family, method) for i in range(latents.shape[0])]
        return image_grid(pictures, 1, grid)

    def _render_one(self, latents: torch.Tensor, family: str, method: str | None) -> Image.Image:
        if method == APPROX_NN and latents.shape[1] == 4:
            net = self.approx_nn(family)
            if net is not None:
                with torch.no_grad():
                    out = net(latents[:1].detach().float().cpu())
                return _to_image(out[0])
        if method == TAESD and latents.shape[1] == 4 and self.tiny_vae is not None:
            net = self.tiny_vae.get("decoder", family)
            if net is not None:
                return _to_image(self.tiny_vae.decode(net, latents[:1].detach().float())[0] * 2 - 1)
        return latent_preview(latents, family)


NO_FILES = Previews(None)  # a job without a server's preview files: Approx NN falls back (said once)
