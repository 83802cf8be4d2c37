"""The listing and maintenance endpoints clients call to discover what they can ask for."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from pipeline.diffusion import samplers
from pipeline.jobs import scripts as img2img_scripts
from pipeline.models.networks import FAMILY_WIDTHS, checkpoint_family
from server.deps import run_on_worker, services
from server.errors import NEVER_QUEUED
from server.services import Services

router = APIRouter(prefix="/sdapi/v1", tags=["listing"])
CONTROLNET_M2M = "controlnet m2m"


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


class SDVaeItem(BaseModel):
    model_name: str
    filename: str


class ScriptArg(BaseModel):
    label: str | None = None
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list[str] | None = None


class ScriptInfo(BaseModel):
    name: str | None = None
    is_alwayson: bool | None = None
    is_img2img: bool | None = None
    args: list[ScriptArg]


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: str | None = None


class RealesrganItem(BaseModel):
    name: str
    path: str | None = None
    scale: int | None = None


class HypernetworkItem(BaseModel):
    name: str
    path: str | None = None


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, Any]
    skipped: dict[str, Any]


@router.get("/sd-models", response_model=list[SDModelItem])
async def sd_models(svc: Services = Depends(services)) -> list[dict[str, Any]]:
    return svc.models.api_list()


@router.post("/refresh-checkpoints")
async def refresh_checkpoints(request: Request, svc: Services = Depends(services)) -> None:
    await run_on_worker(svc, request, "refresh-checkpoints", svc.refresh_checkpoints)


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
    # A1111 lists every named script of a tab: the always-on ones in both, the selectable ones (script_name)
    always_on = [e.name.lower() for e in svc.extensions.listed()]
    # "controlnet m2m" (the extension's video script, not served) is how webuiapi detects ControlNet support
    with_cn = always_on + [CONTROLNET_M2M]
    return ScriptsList(txt2img=with_cn, img2img=with_cn + list(img2img_scripts.NAMES))


@router.get("/script-info", response_model=list[ScriptInfo])
async def script_info(svc: Services = Depends(services)) -> list[ScriptInfo]:
    """Each always-on script twice, as A1111 lists them: its txt2img entry, then its img2img one (a loaded
    extension's hooks take no described arguments; Tiled Diffusion describes its own), then the selectable
    img2img scripts with their positional args (labels, defaults, ranges, choices)."""
    always_on = [ScriptInfo(**ext.script_info(img2img))
                 for img2img in (False, True) for ext in svc.extensions.listed()]
    return always_on + [ScriptInfo(**info) for info in img2img_scripts.script_info(svc.upscalers.names())]


@router.get("/sd-vae", response_model=list[SDVaeItem])
async def sd_vae(svc: Services = Depends(services)) -> list[dict[str, str]]:
    return [v.as_api() for v in svc.models.vaes.list()]


@router.post("/refresh-vae", openapi_extra=NEVER_QUEUED)
async def refresh_vae(svc: Services = Depends(services)) -> None:
    await run_in_threadpool(svc.refresh_vaes)


@router.get("/prompt-styles", response_model=list[PromptStyleItem])
async def prompt_styles(svc: Services = Depends(services)) -> list[dict[str, str]]:
    """The styles of `<data-dir>/styles.csv` (A1111's format: name,prompt,negative_prompt)."""
    styles = await run_in_threadpool(svc.styles.list)
    return [s.as_api() for s in styles]


@router.get("/face-restorers", response_model=list[FaceRestorerItem])
async def face_restorers(svc: Services = Depends(services)) -> list[dict[str, Any]]:
    """The face restorers whose model files were found under `<models>/Codeformer` and `<models>/GFPGAN`
    (CodeFormer only with --enable-noncommercial-upscalers), in A1111's order; `cmd_dir` is the folder of
    the file. Empty when there are none, and then `restore_faces` / `gfpgan_visibility` /
    `codeformer_visibility` are a 400."""
    return svc.upscalers.faces.as_api_list()


@router.get("/realesrgan-models", response_model=list[RealesrganItem])
async def realesrgan_models(svc: Services = Depends(services)) -> list[dict[str, Any]]:
    """The upscaler model files found under `<models>/RealESRGAN`, as {name, path, scale}."""
    root = (svc.config.models_dir / "RealESRGAN").resolve()
    out = []
    for e in svc.upscalers.entries():
        if e.path is None:
            continue
        folder = e.path.resolve().parent
        if folder == root or root in folder.parents or folder.name.casefold() == "realesrgan":
            out.append({"name": e.name, "path": str(e.path), "scale": e.scale})
    return out


@router.get("/hypernetworks", response_model=list[HypernetworkItem])
async def hypernetworks() -> list[dict[str, Any]]:
    """Hypernetworks are not supported: always empty."""
    return []


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


@router.get("/loras", response_model=list[LoraItem])
async def loras(svc: Services = Depends(services)) -> list[dict[str, Any]]:
    """The LoRA-family files under the LoRA and LyCORIS folders (subfolders included), in A1111's shape:
    `name` (file stem), `alias` (`ss_output_name` or the stem), absolute `path`, the safetensors
    `metadata` ({} for .pt/.ckpt). Headers only: no tensor is read."""
    items = await run_in_threadpool(svc.networks.loras.list)
    return [f.as_api() for f in items]


@router.post("/refresh-loras", openapi_extra=NEVER_QUEUED)
async def refresh_loras(svc: Services = Depends(services)) -> None:
    """Rescan the LoRA folders; returns null as A1111 does."""
    await run_in_threadpool(svc.networks.loras.refresh)


@router.get("/embeddings", response_model=EmbeddingsResponse)
async def embeddings(svc: Services = Depends(services)) -> dict[str, Any]:
    """The textual-inversion files of the embeddings folder, as A1111 lists them for the current model:
    `loaded` (width fits its text encoders) and `skipped` (with a `reason`), each item with `step`,
    `sd_checkpoint`, `sd_checkpoint_name`, `shape` (width) and `vectors`. Unreadable files are in neither
    (they are logged)."""
    def listing() -> dict[str, Any]:
        widths = svc.networks.last_widths
        if widths is None:
            family = checkpoint_family(svc.models, svc.selected_checkpoint().filename) or "sd1"
            widths = FAMILY_WIDTHS[family]
        return svc.networks.embeddings_api(widths)

    return await run_in_threadpool(listing)


@router.post("/refresh-embeddings", openapi_extra=NEVER_QUEUED)
async def refresh_embeddings(svc: Services = Depends(services)) -> None:
    """Reload every embedding file now; returns null as A1111 does."""
    await run_in_threadpool(svc.networks.embeddings.refresh)
