"""GET/POST /sdapi/v1/options: the typed options store. POSTing back the whole GET dict is accepted;
every key is checked before anything changes (an unknown key or a bad value is a 400 naming it).
Changing `sd_model_checkpoint` or `sd_vae` loads it on the worker (after a running job) before answering,
as A1111 does; a load that fails leaves the options as they were."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Body, Depends, Request

from server.deps import run_on_worker, services
from server.services import Services

router = APIRouter(prefix="/sdapi/v1", tags=["options"])


@dataclass
class LoadModelCall:
    """Load checkpoint `filename` with VAE choice `vae`. Scaled out (server/cluster/), one worker replica
    warms it (routed as the jobs that use it are); the others load it when traffic for it arrives."""
    filename: str
    vae: str

    @property
    def model_key(self) -> str:
        return f"{self.filename}|{self.vae}"

    def run(self, svc: Services) -> None:
        previous_vae = svc.models.vae_choice
        svc.models.set_checkpoints_limit(svc.options.get("sd_checkpoints_limit"),
                                         svc.options.get("sd_checkpoints_keep_in_cpu"))
        svc.models.select_vae(self.vae, apply_now=False)
        try:
            svc.models.get(self.filename)
        except Exception:
            svc.models.vae_choice = previous_vae
            raise


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
        call = LoadModelCall(target.filename, vae)  # on the worker, after the running job
        await run_on_worker(svc, request, "load-model", lambda: call.run(svc), remote=call)
    svc.options.update(changes, checked=True)
    return None
