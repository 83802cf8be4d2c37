"""`POST /sdapi/v1/img2img`: A1111 v1.10's img2img fields with their API defaults (which differ from the
UI's: `inpainting_fill` 0 "fill", `inpaint_full_res` true "only masked", padding 0), on top of the fields
shared with txt2img (`schemas.common`). Unknown fields, the txt2img hires fields among them, are ignored."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

from schemas.common import GenerationRequest

__all__ = ["ImageToImageResponse", "Img2ImgRequest"]


class Img2ImgRequest(GenerationRequest):
    init_images: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, description="base64 images, data: URLs or http(s) URLs (fetched under the api_* options; "
        "required); one per image of the batch, cycled when fewer")
    resize_mode: int = Field(0, ge=0, le=3, description="0 just resize, 1 crop and resize, 2 resize and fill, "
                             "3 latent upscale")
    image_cfg_scale: float | None = Field(None, description="InstructPix2Pix models only; ignored otherwise")
    mask: str | None = Field(None, description="base64 image: white = repaint (alpha when not opaque)")
    mask_blur_x: int = Field(4, ge=0, le=512)
    mask_blur_y: int = Field(4, ge=0, le=512)
    mask_blur: int | None = Field(None, ge=0, le=512, description="when set, both mask_blur_x and mask_blur_y")
    mask_round: bool = True
    inpainting_fill: int = Field(0, ge=0, le=3, description="masked content: 0 fill, 1 original, 2 latent noise, "
                                 "3 latent nothing")
    inpaint_full_res: bool = Field(True, description="true: only the masked region (plus padding) is sampled, "
                                   "at width x height, and pasted back")
    inpaint_full_res_padding: int = Field(0, ge=0, le=4096,
                                          description="pixels added around the mask for inpaint_full_res")
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="1: repaint what the mask leaves black")
    initial_noise_multiplier: float | None = Field(None, ge=0.0, le=10.0,
                                                   description="null: the option initial_noise_multiplier")
    latent_mask: str | None = Field(None, description="not supported (A1111 crashes on it): must be null")
    include_init_images: bool = Field(False, description="false: init_images and mask are null in the echoed "
                                      "parameters")


class ImageToImageResponse(BaseModel):
    images: list[str] | None = Field(None, description="base64 PNGs (samples_format), no data: prefix")
    parameters: dict[str, Any]
    info: str = Field(description="a JSON string with A1111's keys (all_seeds, infotexts, ...)")
