"""Which dtype each component computes in, per device and `--precision`, and the memory layout that pays.

What stays float32 whatever is chosen here: the seeded noise, the sampler arithmetic and classifier-free
guidance (pipeline/sampling.py casts the UNet's output to float32 before either), and the decoded image
(pipeline/vae.py). Only the forwards of the text encoders, UNet and VAE run in the chosen dtype.

CUDA (unchanged): fp16 UNet and text encoders, the VAE in bf16 where the card supports it (SDXL's VAE
overflows in fp16) else fp32. CPU: bf16 where the processor multiplies bf16 natively (AVX-512 BF16 / AMX:
2-4x fp32 there, see docs/speed.md "CPU precision" for the measured speed and fidelity), else fp32 (emulated bf16
is slower than fp32, fp16 on a CPU far slower still); with bf16 the VAE runs channels-last, where oneDNN's
bf16 convolutions are about 3x faster than in the default layout."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from pipeline.models.accel import cpu

log = logging.getLogger("hiresd.accel")

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Precision:
    """The dtypes and layouts of one device. `vae_dtype` None means the VAE runs in `dtype`."""

    device: torch.device
    dtype: torch.dtype  # UNet and text encoders
    vae_dtype: torch.dtype | None = None
    vae_channels_last: bool = False
    unet_channels_last: bool = False
    note: str = ""

    def describe(self) -> str:
        vae = self.vae_dtype or self.dtype
        layout = [n for n, on in (("VAE", self.vae_channels_last), ("UNet", self.unet_channels_last)) if on]
        text = f"device {self.device}, dtype {_name(self.dtype)}, VAE dtype {_name(vae)}"
        if layout:
            text += f", channels-last {' and '.join(layout)}"
        return text + (f" ({self.note})" if self.note else "")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def choose(device: torch.device, precision: str = "auto", vae_precision: str = "auto", *,
           native_bf16: bool | None = None, cuda_bf16: bool | None = None) -> Precision:
    """The precision policy for `device`. `precision` is auto|fp32|fp16|bf16, `vae_precision` auto|fp32
    (`--no-half-vae`). `native_bf16` / `cuda_bf16` override the hardware probes (tests, benchmarks)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type == "cpu":
        native = cpu.has_native_bf16() if native_bf16 is None else native_bf16
        return _cpu(device, precision, vae_precision, native)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(precision, torch.float16)
    supports_bf16 = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
    vae = torch.bfloat16 if dtype == torch.float16 and supports_bf16 else None
    if dtype == torch.float16 and vae is None:
        vae = torch.float32
    if vae_precision == "fp32" and dtype != torch.float32:  # --no-half-vae
        vae = torch.float32
    return Precision(device, dtype, vae)


def _cpu(device: torch.device, precision: str, vae_precision: str, native: bool) -> Precision:
    note = ""
    if precision == "fp16":
        log.warning("fp16 on the CPU is very slow and inexact; using fp32")
        precision, note = "fp32", "fp16 asked: fp32 on the CPU"
    if precision == "auto":
        precision = "bf16" if native else "fp32"
        note = "auto: native bf16 on this CPU" if native else "auto: no native bf16 on this CPU"
    elif precision == "bf16" and not native:
        note = "bf16 asked on a CPU without native bf16: emulated, slower than fp32"
    if precision == "fp32":
        return Precision(device, torch.float32, None, note=note)
    vae = torch.float32 if vae_precision == "fp32" else None
    return Precision(device, torch.bfloat16, vae, vae_channels_last=vae is None, note=note)
