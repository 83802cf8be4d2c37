"""`POST /sdapi/v1/txt2img`: every A1111 v1.10 field with its name, type and default, plus the Forge and
SD.Next fields real clients send. Unknown fields are ignored; integral floats are accepted for integers.
The fields shared with img2img live in `schemas.common`."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from schemas.common import GenerationRequest, Lenient

__all__ = ["GenerationRequest", "Lenient", "TextToImageResponse", "Txt2ImgRequest"]


class Txt2ImgRequest(GenerationRequest):
    firstpass_image: str | None = None
    enable_hr: bool = False
    firstphase_width: int = Field(0, ge=0, le=16384)
    firstphase_height: int = Field(0, ge=0, le=16384)
    hr_scale: float = Field(2.0, gt=0.0, le=16.0)
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = Field(0, ge=0, le=1000)
    hr_resize_x: int = Field(0, ge=0, le=16384)
    hr_resize_y: int = Field(0, ge=0, le=16384)
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    # Forge fields, accepted so that Forge clients work. `hr_cfg` absent means "same as cfg_scale"
    # (never Forge's silent 1.0); the distilled-guidance values only matter to Flux-style models.
    hr_cfg: float | None = Field(None, ge=0.0, le=100.0)
    hr_distilled_cfg: float | None = None
    hr_additional_modules: list[str] | None = None


class TextToImageResponse(BaseModel):
    images: list[str] | None = Field(None, description="base64 PNGs (samples_format), no data: prefix")
    parameters: dict[str, Any]
    info: str = Field(description="a JSON string with A1111's keys (all_seeds, infotexts, ...)")
