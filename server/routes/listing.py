"""The listing and maintenance endpoints clients call to discover what they can ask for."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from pipeline import samplers
from server.deps import run_on_worker, services
from server.services import Services

router = APIRouter(prefix="/sdapi/v1", tags=["listing"])


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscalerModeItem(BaseModel):
    name: str


class ScriptsList(BaseModel):
    txt2img: list[str]
    img2img: list[str]


@router.get("/sd-models", response_model=list[SDModelItem])
async def sd_models(svc: Services = Depends(services)) -> list[dict[str, Any]]:
    return svc.models.api_list()


@router.post("/refresh-checkpoints")
async def refresh_checkpoints(request: Request, svc: Services = Depends(services)) -> None:
    await run_on_worker(svc, request, "refresh-checkpoints", svc.models.refresh)


@router.get("/samplers", response_model=list[SamplerItem])
async def list_samplers() -> list[dict[str, Any]]:
    return samplers.api_samplers()


@router.get("/schedulers", response_model=list[SchedulerItem])
async def list_schedulers() -> list[dict[str, Any]]:
    return samplers.api_schedulers()


@router.get("/upscalers", response_model=list[UpscalerItem])
async def list_upscalers(svc: Services = Depends(services)) -> list[dict[str, Any]]:
    return svc.upscalers.as_api_list()


@router.get("/latent-upscale-modes", response_model=list[LatentUpscalerModeItem])
async def latent_upscale_modes(svc: Services = Depends(services)) -> list[dict[str, str]]:
    return [{"name": n} for n in svc.upscalers.latent_modes()]


@router.get("/scripts", response_model=ScriptsList)
async def scripts(svc: Services = Depends(services)) -> ScriptsList:
    return ScriptsList(txt2img=svc.extensions.names(), img2img=[])
