"""The loaded diffusion model as the sampler sees it: plain modules plus the facts needed to drive them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

Family = Literal["sd1", "sd2", "sdxl"]


@dataclass
class SDModel:
    """One Stable Diffusion checkpoint, loaded and ready on `device`.

    text_encoders/tokenizers hold one entry for SD 1.x/2.x and two for SDXL (CLIP-L, then OpenCLIP-bigG
    with projection). `scheduler_config` is the family's training noise schedule (beta_start, beta_end,
    beta_schedule, num_train_timesteps, prediction_type, ...), the base every sampler is built from.
    """

    title: str
    family: Family
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    vae_dtype: torch.dtype | None = None
    refiner: bool = False  # an SDXL refiner: OpenCLIP-bigG only, aesthetic score in its vector conditioning
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler_config.get("prediction_type", "epsilon"))

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)
