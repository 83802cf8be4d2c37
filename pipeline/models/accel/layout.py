"""Apply a precision policy's memory layout to a loaded model (after it is built in its dtypes)."""
from __future__ import annotations

import torch

from pipeline.models.accel.precision import Precision
from pipeline.models.sd_model import SDModel


def apply_layout(model: SDModel, precision: Precision) -> None:
    """Channels-last weights for the components the policy names (convolutions then run in that layout;
    the result is the same computation, not the same rounding order)."""
    if precision.vae_channels_last:
        model.vae.to(memory_format=torch.channels_last)
    if precision.unet_channels_last:
        model.unet.to(memory_format=torch.channels_last)
    model.extra["channels_last"] = (precision.vae_channels_last, precision.unet_channels_last)
