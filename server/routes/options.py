"""GET/POST /sdapi/v1/options: the typed options store. POSTing back the whole GET dict is accepted;
changing `sd_model_checkpoint` loads that model on the worker (after a running job) before answering."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Request

from server.deps import run_on_worker, services
from server.services import Services

router = APIRouter(prefix="/sdapi/v1", tags=["options"])


@router.get("/options")
async def get_options(svc: Services = Depends(services)) -> dict[str, Any]:
    return svc.current_options()


@router.post("/options")
async def set_options(request: Request, req: dict[str, Any] = Body(...), svc: Services = Depends(services)) -> None:
    changes = svc.options.validate(req)
    ckpt = changes.get("sd_model_checkpoint")
    if ckpt and svc.models.resolve_title(ckpt, "sd_model_checkpoint") != svc.models.current_title:
        title = svc.models.resolve_title(ckpt, "sd_model_checkpoint")
        await run_on_worker(svc, request, "load-checkpoint", lambda: svc.models.get(title))
        changes["sd_model_checkpoint"] = title
    changes.pop("sd_checkpoint_hash", None)  # derived from the loaded model
    svc.options.update(changes)
    return None
