"""sd-webui-controlnet's endpoints (`/controlnet/*`, its `scripts/api.py`), with its response shapes:
version, model_list, module_list, control_types, settings and detect. Behind --api-auth like every route."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException
from PIL import Image
from starlette.concurrency import run_in_threadpool

from pipeline.jobs.controlnet import preprocessors
from pipeline.jobs.controlnet.request import UNIT_COUNT
from pipeline.runtime.errors import InvalidRequest
from schemas.controlnet import (
    ControlTypesResponse,
    DetectRequest,
    DetectResponse,
    ModelListResponse,
    ModuleListResponse,
    SettingsResponse,
    VersionResponse,
)
from server.deps import services, url_fetch
from server.imagecodec import decode_image, encode_images_b64
from server.services import Services

router = APIRouter(prefix="/controlnet", tags=["controlnet"])
VERSION = 3  # the API version the extension reports
CONTROL_TYPES = (
    "Canny",
    "Lineart",
    "Scribble",
    "MLSD",
    "Tile",
    "InstructP2P",
    "Depth",
    "NormalMap",
    "OpenPose",
    "SoftEdge",
    "Segmentation",
    "Shuffle",
    "Inpaint",
    "IP-Adapter",
    "Reference",
    "Recolor",
    "Revision",
    "T2I-Adapter",
)


def _titles(svc: Services) -> list[str]:
    return svc.controlnets.titles() if svc.controlnets is not None else []


@router.get("/version", response_model=VersionResponse)
async def version() -> dict[str, Any]:
    return {"version": VERSION}


@router.get("/model_list", response_model=ModelListResponse)
async def model_list(update: bool = True, svc: Services = Depends(services)) -> dict[str, Any]:
    """The ControlNet files' titles (`name [hash]`); `update` rescans the folders first."""
    if update and svc.controlnets is not None:
        await run_in_threadpool(svc.controlnets.refresh)
    return {"model_list": await run_in_threadpool(_titles, svc)}


@router.get("/module_list", response_model=ModuleListResponse)
async def module_list(alias_names: bool = False) -> dict[str, Any]:
    """The preprocessors hiresd runs, with their sliders. `model_free` is false: each needs a ControlNet
    model (the extension's meaning)."""
    names = preprocessors.names(alias_names)
    detail = {
        shown: {"model_free": False, "sliders": preprocessors.MODEL_FREE[name].sliders()}
        for shown, name in zip(names, preprocessors.names(), strict=True)
    }
    return {"module_list": names, "module_detail": detail}


@router.get("/control_types", response_model=ControlTypesResponse)
async def control_types(svc: Services = Depends(services)) -> dict[str, Any]:
    """Per control type the preprocessors and models that fit it (models by name, as the extension)."""
    titles = _titles(svc)
    out: dict[str, Any] = {
        "All": {
            "module_list": preprocessors.names(),
            "model_list": ["None", *titles],
            "default_option": "none",
            "default_model": "None",
        }
    }
    for kind in CONTROL_TYPES:
        mods = [p.name for p in preprocessors.MODEL_FREE.values() if kind in p.tags]
        models = [t for t in titles if kind.lower() in t.lower()]
        default_model = next((m for m in models if "11" in m.split("[")[0]), models[0] if models else "None")
        out[kind] = {
            "module_list": ["none", *[m for m in mods if m != "none"]],
            "model_list": ["None", *models],
            "default_option": mods[0] if mods else "none",
            "default_model": default_model,
        }
    return {"control_types": out}


@router.get("/settings", response_model=SettingsResponse)
async def settings() -> dict[str, Any]:
    return {"control_net_unit_count": UNIT_COUNT}


def _detect(req: DetectRequest, images: list[Image.Image]) -> list[Image.Image]:
    pre = preprocessors.resolve(req.controlnet_module, "controlnet_module")
    res, a, b = pre.settle(
        req.controlnet_processor_res, req.controlnet_threshold_a, req.controlnet_threshold_b
    )
    out = []
    for img in images:
        arr = np.ascontiguousarray(np.asarray(img.convert("RGB")))
        out.append(Image.fromarray(preprocessors.hwc3(pre.apply(arr, res, a, b))))
    return out


@router.post("/detect", response_model=DetectResponse)
async def detect(req: DetectRequest, svc: Services = Depends(services)) -> dict[str, Any]:
    """Run a preprocessor on each input image (as the extension: at `controlnet_processor_res`, -1 or out of
    range = the preprocessor's default, thresholds likewise); the maps come back as base64 PNGs."""
    if not req.controlnet_input_images:
        raise HTTPException(422, "No image selected")
    try:
        preprocessors.resolve(req.controlnet_module, "controlnet_module")
    except InvalidRequest as exc:
        raise HTTPException(422, f"Module not available: {exc}") from None
    fetch = url_fetch(svc, svc.options.all())

    def decode() -> list[Image.Image]:
        return [decode_image(b, field=f"controlnet_input_images[{i}]", max_pixels=svc.config.max_pixels,
                             fetch=fetch)
                for i, b in enumerate(req.controlnet_input_images)]

    images = await run_in_threadpool(decode)
    maps = await run_in_threadpool(_detect, req, images)
    return {"info": "Success", "images": encode_images_b64(maps)}
