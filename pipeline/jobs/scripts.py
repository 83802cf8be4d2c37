"""The selectable img2img scripts (`script_name`), in the order /sdapi/v1/scripts lists them, and their
/sdapi/v1/script-info entries (A1111's ScriptInfo shape, as plain dicts)."""
from __future__ import annotations

from typing import Any

from pipeline.jobs import sd_upscale, ultimate_upscale

NAMES = (sd_upscale.NAME, ultimate_upscale.NAME)


def script_info(upscaler_names: list[str]) -> list[dict[str, Any]]:
    """One entry per script: name, is_alwayson false, is_img2img true, args (with the upscaler names)."""
    return [{"name": module.NAME, "is_alwayson": False, "is_img2img": True,
             "args": module.script_info_args(upscaler_names)} for module in (sd_upscale, ultimate_upscale)]
