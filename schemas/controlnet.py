"""sd-webui-controlnet's API shapes: a unit of `alwayson_scripts.ControlNet.args`, and the `/controlnet/*`
endpoints' bodies.

A unit has the extension's fields and defaults (v1.1.455 `internal_controlnet/args.py`) and takes every
historical form clients still send: the old names `input_image`, `lowvram`, `guidance` and Forge's
`mask_image`; `resize_mode`, `control_mode` and `hr_option` as strings, old string aliases or integers
(0/1/2). Unknown keys are ignored."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
RESIZE_ALIASES = {
    "Inner Fit (Scale to Fit)": "Crop and Resize",
    "Scale to Fit (Inner Fit)": "Crop and Resize",
    "Outer Fit (Shrink to Fit)": "Resize and Fill",
    "Envelope (Outer Fit)": "Resize and Fill",
}
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
HR_OPTIONS = ("Both", "Low res only", "High res only")
LEGACY_NAMES = {
    "input_image": "image",
    "lowvram": "low_vram",
    "guidance": "guidance_end",
    "mask_image": "mask",
}


def _choice(value: Any, choices: tuple[str, ...], aliases: dict[str, str], what: str) -> str:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be one of {list(choices)} or 0..{len(choices) - 1}, got {value!r}")  # noqa: TRY004
    if isinstance(value, (int, float)) and float(value).is_integer() and 0 <= int(value) < len(choices):
        return choices[int(value)]
    if isinstance(value, str):
        text = aliases.get(value, value)
        for c in choices:
            if text.lower() == c.lower():
                return c
        if text.strip().isdigit() and int(text) < len(choices):
            return choices[int(text)]
    raise ValueError(f"{what} must be one of {list(choices)} or 0..{len(choices) - 1}, got {value!r}")


class ControlNetUnit(BaseModel):
    """One ControlNet unit. `enabled` is off by default, as in the extension (v1.1.4xx)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    enabled: bool = False
    module: str = "none"
    model: str = "None"
    weight: float = Field(1.0, ge=0.0, le=2.0)
    image: Any = None
    mask: Any = None
    resize_mode: str = "Crop and Resize"
    low_vram: bool = False
    processor_res: int = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = Field(0.0, ge=0.0, le=1.0)
    guidance_end: float = Field(1.0, ge=0.0, le=1.0)
    pixel_perfect: bool = False
    control_mode: str = "Balanced"
    hr_option: str = "Both"
    inpaint_crop_input_image: bool = True
    save_detected_map: bool = True
    advanced_weighting: list[float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"a unit is an object of the extension's fields, got {type(data).__name__}")  # noqa: TRY004
        out = dict(data)
        for old, new in LEGACY_NAMES.items():
            if old in out:
                if out.get(new) is not None and out[old] is not None and new in data:
                    raise ValueError(f"both {old!r} and {new!r} given; send {new!r} only")
                value = out.pop(old)
                if out.get(new) is None:
                    out[new] = value
        for key in ("module", "model"):
            if out.get(key) is None:
                out.pop(key, None)
        return out

    @field_validator("processor_res", mode="before")
    @classmethod
    def _int_res(cls, v: Any) -> Any:
        return int(v) if isinstance(v, float) and v.is_integer() else v

    @field_validator("resize_mode", mode="before")
    @classmethod
    def _resize(cls, v: Any) -> str:
        return _choice(v, RESIZE_MODES, RESIZE_ALIASES, "resize_mode")

    @field_validator("control_mode", mode="before")
    @classmethod
    def _control(cls, v: Any) -> str:
        return _choice(v, CONTROL_MODES, {}, "control_mode")

    @field_validator("hr_option", mode="before")
    @classmethod
    def _hr(cls, v: Any) -> str:
        return _choice(
            v,
            HR_OPTIONS,
            {
                "HiResFixOption.BOTH": "Both",
                "HiResFixOption.LOW_RES_ONLY": "Low res only",
                "HiResFixOption.HIGH_RES_ONLY": "High res only",
            },
            "hr_option",
        )

    @model_validator(mode="after")
    def _guidance_order(self) -> ControlNetUnit:
        if self.guidance_start > self.guidance_end:
            raise ValueError(f"guidance_start ({self.guidance_start}) > guidance_end ({self.guidance_end})")
        return self


class DetectRequest(BaseModel):
    """POST /controlnet/detect (the extension's field names)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_masks: list[str] | None = None
    controlnet_processor_res: int = -1
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    low_vram: bool = False

    @model_validator(mode="before")
    @classmethod
    def _old_images_name(cls, data: Any) -> Any:
        """webuiapi sends the old name `controlnet_images`."""
        if isinstance(data, dict) and "controlnet_images" in data and "controlnet_input_images" not in data:
            data = {**data, "controlnet_input_images": data["controlnet_images"]}
        return data


class DetectResponse(BaseModel):
    info: str
    images: list[str]


class ModelListResponse(BaseModel):
    model_list: list[str]


class ModuleListResponse(BaseModel):
    module_list: list[str]
    module_detail: dict[str, Any] | None = None


class VersionResponse(BaseModel):
    version: int


class SettingsResponse(BaseModel):
    control_net_unit_count: int


class ControlTypesResponse(BaseModel):
    control_types: dict[str, Any]
