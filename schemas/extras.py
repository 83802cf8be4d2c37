"""Request and response models of `/sdapi/v1/extra-single-image` and `/extra-batch-images`.

Field names, defaults and constraints follow A1111 v1.10 (`ExtrasBaseRequest` and friends).
Unknown fields are ignored; integral floats are accepted for integers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas import leniency


class _Lenient(BaseModel):
    """Unknown keys ignored; booleans taken as 0/1 by number fields and 0/1 as booleans, as the JSON schema
    says (`schemas.leniency`); numbers sent as JSON strings and values nested deeper than 64 levels are a
    422. Integer fields take integral floats only (10.5 is refused)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=lambda s, cls: leniency.document(s, False))

    @model_validator(mode="before")
    @classmethod
    def _json_values_only(cls, data: object) -> object:
        if isinstance(data, dict):
            for name, f in cls.model_fields.items():
                if name in data:
                    leniency.refuse_deep(name, data[name])
                    leniency.refuse_strings(name, leniency.scalar_kind(f.annotation), data[name])
        return data


class ExtrasBaseRequest(_Lenient):
    """Fields shared by both extras endpoints."""

    resize_mode: Literal[0, 1] = Field(
        0, description="0: scale by upscaling_resize; 1: scale to upscaling_resize_w x upscaling_resize_h"
    )
    show_extras_results: bool = Field(True, description="Accepted for compatibility; unused by the API")
    gfpgan_visibility: float = Field(0.0, ge=0, le=1, allow_inf_nan=False, description="GFPGAN blend")
    codeformer_visibility: float = Field(0.0, ge=0, le=1, allow_inf_nan=False, description="CodeFormer blend")
    codeformer_weight: float = Field(
        0.0, ge=0, le=1, allow_inf_nan=False, description="CodeFormer fidelity (0 = strongest effect)"
    )
    upscaling_resize: float = Field(
        2.0, gt=0, allow_inf_nan=False, description="Upscale factor for resize_mode 0"
    )
    upscaling_resize_w: int = Field(512, ge=1, description="Target width for resize_mode 1")
    upscaling_resize_h: int = Field(512, ge=1, description="Target height for resize_mode 1")
    upscaling_crop: bool = Field(True, description="resize_mode 1: crop to exactly the target size")
    upscaler_1: str = Field("None", description="Main upscaler name, as listed by /sdapi/v1/upscalers; null "
                            "means None", json_schema_extra=leniency.nullable)
    upscaler_2: str = Field("None", description="Secondary upscaler name; null means None",
                            json_schema_extra=leniency.nullable)
    extras_upscaler_2_visibility: float = Field(
        0.0, ge=0, le=1, allow_inf_nan=False, description="Blend weight of upscaler_2"
    )
    upscale_first: bool = Field(False, description="Accepted for compatibility; ignored as in A1111 1.10")

    @field_validator("resize_mode", mode="before")
    @classmethod
    def _integral_resize_mode(cls, value: object) -> object:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("upscaler_1", "upscaler_2", mode="before")
    @classmethod
    def _null_is_none(cls, value: object) -> object:
        return "None" if value is None else value


def _image_required(schema: dict) -> None:
    leniency.document(schema, False)
    schema.setdefault("required", []).append("image")


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    """`POST /sdapi/v1/extra-single-image`."""

    # A1111's default is "", which no server can upscale: the schema asks for an image (minLength 1,
    # required) so that a schema-valid body is one we accept; leaving it out is still a 400 naming it.
    image: str = Field("", min_length=1,
                       description="Image as base64, bare or as a data: URL, or an http(s) URL",
                       json_schema_extra=lambda s: s.pop("default", None))
    model_config = ConfigDict(json_schema_extra=lambda s, cls: _image_required(s))


class FileData(_Lenient):
    """One item of `imageList`; `name` is accepted and discarded, as in A1111."""

    data: str = Field(min_length=1, description="Image as base64, bare or as a data: URL, or an http(s) URL")
    name: str = Field("", description="File name (unused)")


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    """`POST /sdapi/v1/extra-batch-images`."""

    imageList: list[FileData] = Field(description="Images to process, in order")  # noqa: N815


class ExtrasSingleImageResponse(BaseModel):
    """Response of `extra-single-image`."""

    html_info: str = Field(description="The postprocessing infotext as HTML")
    image: str = Field("", description="The result as base64 PNG, without a data: prefix")


class ExtrasBatchImagesResponse(BaseModel):
    """Response of `extra-batch-images`."""

    html_info: str = Field(description="The postprocessing infotext of the last image as HTML")
    images: list[str] = Field(description="The results as base64 PNGs, in input order")
