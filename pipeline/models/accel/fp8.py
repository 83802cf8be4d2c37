"""A1111's `fp8_storage`: the weights of every Linear and Conv2d layer of the UNet and the text encoders
(not the VAE) stored in float8 (e4m3fn), each layer casting them up to its input's dtype on every call
(A1111 does the same through autocast or its manual cast). Halves the weights' memory; the results move
by float8's rounding.

`cache_fp16_weight` keeps a float16 copy of those weights on the CPU (A1111: `fp16_weight`/`fp16_bias`), from
which a LoRA's merged weights are computed (networks/patch.py), so that merging rounds to float8 once rather
than on top of the already rounded weights."""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger("hiresd.accel")

FP8 = torch.float8_e4m3fn
FP8_CHOICES = ("Disable", "Enable for SDXL", "Enable")


def wanted(option: Any, family: str) -> bool:
    """Whether option `fp8_storage` asks float8 weights for a model of `family` (A1111's `check_fp8`)."""
    return option == "Enable" or (option == "Enable for SDXL" and family == "sdxl")


class Fp8Linear(torch.nn.Linear):
    """A Linear whose float8 parameters are cast to the input's dtype per call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class Fp8Conv2d(torch.nn.Conv2d):
    """A Conv2d whose float8 parameters are cast to the input's dtype per call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self._conv_forward(x, self.weight.to(x.dtype), bias)


def store_fp8(model: Any, cache_fp16: bool) -> int:
    """Put the Linear / Conv2d weights of `model`'s UNet and text encoders into float8 (in place, classes
    swapped to the casting ones); with `cache_fp16`, a float16 CPU copy of each is kept first. Returns the
    number of layers converted."""
    n = 0
    for part in (model.unet, *model.text_encoders):
        for module in part.modules():
            if type(module) is torch.nn.Linear:
                module.__class__ = Fp8Linear
            elif type(module) is torch.nn.Conv2d:
                module.__class__ = Fp8Conv2d
            elif not isinstance(module, (Fp8Linear, Fp8Conv2d)):
                continue
            if cache_fp16:
                module.fp16_weight = module.weight.detach().to("cpu", torch.float16, copy=True)
                if module.bias is not None:
                    module.fp16_bias = module.bias.detach().to("cpu", torch.float16, copy=True)
            module.to(FP8)
            n += 1
    log.info("fp8_storage: %d layers of %s stored in float8%s", n, getattr(model, "title", "the model"),
             " (float16 copies kept for LoRA)" if cache_fp16 else "")
    return n


def is_fp8(t: torch.Tensor | None) -> bool:
    return t is not None and t.dtype == FP8
