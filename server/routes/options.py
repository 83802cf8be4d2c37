"""GET/POST /sdapi/v1/options: the typed options store. POSTing back the whole GET dict is accepted;
every key is checked before anything changes (an unknown key or a bad value is a 400 naming it).
Changing `sd_model_checkpoint` or `sd_vae` loads it on the worker (after a running job) before answering,
as A1111 does; a load that fails leaves the options as they were."""
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
    changes.pop("sd_checkpoint_hash", None)  # derived from the selected model
    current = svc.selected_checkpoint()
    target = current
    if changes.get("sd_model_checkpoint"):
        target = svc.models.find(changes["sd_model_checkpoint"], "sd_model_checkpoint")
        changes["sd_model_checkpoint"] = target.title
    else:
        changes.pop("sd_model_checkpoint", None)
    vae = changes.get("sd_vae", svc.options.get("sd_vae"))
    if target.filename != current.filename or vae != svc.options.get("sd_vae"):

        def load() -> None:  # on the worker, after the running job
            previous_vae = svc.models.vae_choice
            svc.models.select_vae(vae, apply_now=False)
            try:
                svc.models.get(target.filename)
            except Exception:
                svc.models.vae_choice = previous_vae
                raise

        await run_on_worker(svc, request, "load-model", load)
    svc.options.update(changes, checked=True)
    return None
