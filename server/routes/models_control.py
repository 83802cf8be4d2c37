"""A1111's model-control and listing routes that bots call: unload-checkpoint / reload-checkpoint (free the
model between bursts, load it back), extensions (A1111's list shape) and interrogate (CLIP / DeepBooru,
which this server cannot run: a 501 naming what it would need)."""
from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from server.deps import run_on_worker, services
from server.errors import ErrorResponse
from server.services import Services

log = logging.getLogger("hiresd.models")
router = APIRouter(prefix="/sdapi/v1", tags=["models"])

INTERROGATORS = ("clip", "deepdanbooru")


@router.post("/unload-checkpoint")
async def unload_checkpoint(request: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    """Drop the loaded checkpoint(s) from memory, device and RAM alike (A1111 moves the model to the CPU;
    here it is freed), after a running job. The options are unchanged; the next job, or reload-checkpoint,
    loads the selected checkpoint from its file again. Answers A1111's `{}`."""
    await run_on_worker(svc, request, "unload-checkpoint", svc.models.unload)
    return {}


@router.post("/reload-checkpoint")
async def reload_checkpoint(request: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    """Load the selected checkpoint (option `sd_model_checkpoint`, with the `sd_vae` option's VAE) back,
    after a running job; nothing to do when it is loaded. Answers A1111's `{}`."""
    await run_on_worker(svc, request, "reload-checkpoint", svc.reload_checkpoint)
    return {}


class ExtensionItem(BaseModel):
    name: str = Field(description="the extension's NAME (else its file name)")
    remote: str = Field(description="the git remote of the folder it was loaded from; '' when not in git")
    branch: str = Field(description="its git branch; '' when not in git")
    commit_hash: str = Field(description="its git HEAD; '' when not in git")
    commit_date: int = Field(description="its HEAD's commit time (Unix seconds); 0 when not in git")
    version: str = Field(description="the first 8 digits of commit_hash, as A1111 shows it")
    enabled: bool = Field(description="always true: every extension found at start-up is loaded")


def _git(folder: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=5,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def extension_item(name: str, source: str) -> dict[str, Any]:
    """One loaded extension in A1111's shape, with the git facts of the folder its file is in (a local
    `git` call, no network); an entry-point extension or a file outside git has empty git fields."""
    path = Path(source)
    folder = path.parent if path.is_file() else None
    remote = branch = commit = ""
    date = 0
    if folder is not None and _git(folder, "rev-parse", "--is-inside-work-tree") == "true":
        remote = _git(folder, "config", "--get", "remote.origin.url")
        branch = _git(folder, "rev-parse", "--abbrev-ref", "HEAD")
        commit = _git(folder, "rev-parse", "HEAD")
        stamp = _git(folder, "log", "-1", "--format=%ct")
        date = int(stamp) if stamp.isdigit() else 0
    return {"name": name, "remote": remote, "branch": branch, "commit_hash": commit, "commit_date": date,
            "version": commit[:8], "enabled": True}


@router.get("/extensions", response_model=list[ExtensionItem])
async def extensions(svc: Services = Depends(services)) -> list[dict[str, Any]]:
    """The user extensions loaded at start-up (files in --extensions-dir and `hiresd.extensions` entry
    points), in A1111's item shape. A1111 lists only extensions cloned from a git remote; here every
    loaded one is listed (a plain file with empty git fields), and the built-in always-on scripts are not
    (A1111 does not list its built-in extensions either)."""
    return [extension_item(ext.name, ext.source) for ext in svc.extensions.items
            if not ext.source.startswith("built-in")]


class InterrogateRequest(BaseModel):
    image: str = Field("", description="base64 image (data: URL or bare)")
    model: str = Field("clip", description="clip or deepdanbooru")


@router.post("/interrogate", responses={
    404: {"model": ErrorResponse, "description": "A1111's answers: `Image not found` (no image), `Model not found` "
          "(a model other than clip / deepdanbooru)"},
    501: {"model": ErrorResponse, "description": "clip and deepdanbooru: the detail names the model files they "
          "would need"},
})
async def interrogate(req: InterrogateRequest) -> dict[str, Any]:
    """A1111's image captioning. A1111 answers 404 `Image not found` without an image and 404 `Model not
    found` for another model name; both names it knows are a 501 here: they need model weights this
    server does not have and will not download (CLIP: a BLIP captioning model plus CLIP ViT-L/14 and the
    interrogator's category lists; DeepBooru: the DeepDanbooru ResNet `model-resnet_custom_v3.pt`)."""
    if not req.image:
        raise HTTPException(404, "Image not found")
    if req.model not in INTERROGATORS:
        raise HTTPException(404, "Model not found")
    what = ("a BLIP captioning model, CLIP ViT-L/14 and the CLIP interrogator's category lists"
            if req.model == "clip" else "the DeepDanbooru model (model-resnet_custom_v3.pt)")
    raise HTTPException(501, f"interrogate with {req.model!r} is not available on this server: it needs {what}, "
                        "which hiresd does not ship and never downloads; caption images with another tool "
                        "(A1111, or a tagger) and send the text as the prompt")
