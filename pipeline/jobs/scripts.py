"""The selectable img2img scripts (`script_name`): a registry of name -> script class, in the order
/sdapi/v1/scripts lists them, their /sdapi/v1/script-info entries (A1111's ScriptInfo shape, as plain dicts),
and `attach`, which parses a request's `script_args` into the job before it is queued.

A script class has `parse(args, upscaler_names, resolve)` (a classmethod: the positional arguments, a 400
naming the bad one), `prepare(p, init_w, init_h, max_pixels)` (checks against the job before it is queued)
and `run(p, ctx)` (the job, on the worker). To add one: write its module beside these and list it here."""
from __future__ import annotations

from typing import Any

from pipeline.jobs import sd_upscale, ultimate_upscale
from pipeline.jobs.img2img.prepare import Img2ImgProcessing
from schemas.img2img import Img2ImgRequest
from upscalers.registry import UpscalerRegistry

SCRIPTS: dict[str, Any] = {
    sd_upscale.NAME: sd_upscale.SDUpscale,
    ultimate_upscale.NAME: ultimate_upscale.UltimateSDUpscale,
}
NAMES = tuple(SCRIPTS)
_INFO_ARGS = {sd_upscale.NAME: sd_upscale.script_info_args, ultimate_upscale.NAME: ultimate_upscale.script_info_args}


def script_info(upscaler_names: list[str]) -> list[dict[str, Any]]:
    """One entry per script: name, is_alwayson false, is_img2img true, args (with the upscaler names)."""
    return [{"name": name, "is_alwayson": False, "is_img2img": True, "args": _INFO_ARGS[name](upscaler_names)}
            for name in NAMES]


def attach(p: Img2ImgProcessing, req: Img2ImgRequest, upscalers: UpscalerRegistry, init_w: int, init_h: int,
           max_pixels: int) -> None:
    """The request's script (none for an empty `script_name` or "None"), parsed and checked, as `p.script`."""
    cls = SCRIPTS.get((req.script_name or "").lower())
    if cls is None:
        return
    p.script = cls.parse(list(req.script_args or []), upscalers.names(), lambda name: upscalers.resolve(name).name)
    p.script.prepare(p, init_w, init_h, max_pixels)
