"""FastAPI dependencies: the app's one `Services` object, running a job on the worker, and the common end of
the generation routes (save, encode)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import HTTPException, Request, Response
from PIL import Image
from pydantic import BaseModel, TypeAdapter
from starlette.concurrency import run_in_threadpool

from pipeline.jobs import controlnet
from pipeline.jobs.builtin_scripts import strip_prompt_comments
from pipeline.jobs.common import JobResult
from pipeline.jobs.processing import Processing
from pipeline.models.networks import check_job, default_lora_tag
from server.bodylimit import MIB
from server.grids import grid_wanted, image_grid, save_grid
from server.imagecodec import UrlFetch, decode_image, encode_images_b64
from server.options import OPTIONS
from server.services import Services

T = TypeVar("T")
log = logging.getLogger("hiresd.queue")

# nginx's code for "the client closed the request"; never reaches the (gone) client, only the log
CLIENT_CLOSED = 499


def services(request: Request) -> Services:
    return request.app.state.services


async def _disconnected(request: Request) -> None:
    """Return once the client has gone. The body has been read by then, so the next ASGI message the
    server has for this request is `http.disconnect` (uvicorn sends it when the socket closes)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_on_worker(svc: Services, request: Request, name: str, fn: Callable[[], T],
                        finish_if_gone: bool = False, task_id: str | None = None, remote: Any = None) -> T:
    """Queue `fn` on the device worker as task `task_id` (the request's `force_task_id`, else a new id) and
    await it without blocking the event loop.

    A client that disconnects while its job still waits has the job dropped, never run. A running job
    whose client disconnects is interrupted (A1111 lets it run on, so a client that timed out keeps the
    worker busy for everyone), unless `finish_if_gone` (the request asked to save its images): then it
    finishes and saves. The log says which. A job cancelled by id while it waited (`/interrupt?id_task=`)
    answers 409. `remote` is the same work as a picklable call that a worker replica runs when the server is
    scaled out (server/cluster/); without it the job runs in this process there too."""
    job = svc.worker.submit(name, fn, task_id=task_id, remote=remote)
    result = asyncio.wrap_future(job.future)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        if result not in done:
            who = f"{request.client.host}:{request.client.port}" if request.client else "-"
            if svc.worker.cancel(job):
                log.info("%s: client %s went away while the job waited; dropped", name, who)
                raise HTTPException(CLIENT_CLOSED, "client closed the request; the job was dropped before it ran")
            if finish_if_gone:
                log.info("%s: client %s went away while the job ran; it asked to save its images, so it "
                         "finishes and saves", name, who)
            elif svc.worker.interrupt(job):
                log.info("%s: client %s went away while the job ran; interrupted", name, who)
        try:
            return await result
        except asyncio.CancelledError:
            if not job.future.cancelled():
                raise
            raise HTTPException(409, f"task {job.task_id!r} was cancelled before it ran") from None
    finally:
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await gone


@dataclass
class PreparedJob:
    """A generation request turned into job `p`, with what its end needs: the job kind (`name`), the
    request, its always-on script args, effective options and where its images are saved."""
    name: str
    req: Any
    p: Processing
    script_args: dict[str, list[Any]]
    opts: dict[str, Any]
    save_options: dict[str, Any]


def url_fetch(svc: Services, opts: dict[str, Any]) -> UrlFetch:
    """How a request's image URLs are fetched: A1111's api_* options (`opts`: the request's effective
    options), with --max-body-mb as the byte cap of one image."""
    return UrlFetch.from_options(opts, svc.config.max_body_mb * MIB)


def check_generation(svc: Services, req: Any, p: Processing, script_args: dict[str, list[Any]]) -> None:
    """Before a generation job is queued (sync or async): its always-on script args, styles (A1111's
    styles.csv semantics; an unknown style is a 400) and networks (LoRA tags: unknown name, bad number,
    wrong family -> 400), then ControlNet units (their images decoded or fetched last). Blocking: call it
    off the event loop."""
    p.script_args = script_args
    p.ignored_settings = sorted(k for k in (req.override_settings or {}) if k not in OPTIONS)
    if p.ignored_settings:
        log.info("override_settings: %s not options here (A1111 ignores them too); ignored",
                 ", ".join(repr(k) for k in p.ignored_settings))
    if p.styles:
        p.prompt, p.negative_prompt = svc.styles.apply(req.prompt, req.negative_prompt, p.styles)
        if p.hr_prompt or p.hr_negative_prompt:  # styled once, from the request's own texts
            p.hr_prompt, p.hr_negative_prompt = svc.styles.apply(p.hr_prompt or req.prompt,
                                                                 p.hr_negative_prompt or req.negative_prompt,
                                                                 p.styles)
    strip_prompt_comments(p)  # A1111's Comments script, after the styles
    p.prompt += default_lora_tag(svc.networks, p, p.prompt)  # option sd_lora: in the infotexts' prompts too
    check_job(svc.networks, p, svc.models)
    fetch = url_fetch(svc, p.options)  # A1111's ControlNet decodes inside the job: override_settings apply

    def decode(data: str) -> Any:
        return decode_image(data, field=controlnet.FIELD, max_pixels=svc.config.max_pixels, fetch=fetch)

    controlnet.attach(p, req, svc.controlnets, svc.models, decode)


def generation_job(svc: Services, p: Processing) -> Callable[[], tuple[JobResult, bool]]:
    """The worker's part of a generation: `Services.run_job` (the same checkpoint/VAE resolution for every
    kind); returns the result and whether it was cut short (interrupted or skipped)."""
    def job() -> tuple[JobResult, bool]:
        result = svc.run_job(p)
        state = svc.worker.state
        return result, state.interrupted or state.skipped

    return job


@dataclass
class GenerationCall:
    """A generation job as a worker replica runs it (server/cluster/): picklable, routed to a replica that
    holds its checkpoint and VAE."""
    p: Processing

    @property
    def model_key(self) -> str:
        return f"{self.p.checkpoint}|{self.p.options.get('sd_vae', 'Automatic')}"

    def run(self, svc: Services) -> tuple[JobResult, bool]:
        return generation_job(svc, self.p)()


def finish_generation(svc: Services, req: Any, result: JobResult, incomplete: bool, opts: dict[str, Any],
                      save_options: dict[str, Any]) -> list[str]:
    """After the job, off the worker (blocking): `override_settings` kept when the request asks (A1111's
    `override_settings_restore_afterwards: false`), the images saved (with `save_options` naming the
    folder) and encoded as base64."""
    if req.override_settings and not req.override_settings_restore_afterwards:
        kept = {k: v for k, v in req.override_settings.items() if k in OPTIONS and k != "sd_checkpoint_hash"}
        svc.options.update(svc.options.validate(kept, "override_settings"), checked=True)
    fmt = opts["samples_format"]
    count = len(result.infotexts)  # the results (ControlNet's detected maps after them are no part of it)
    results, later = result.images[:count], result.images[count:]
    companions = result.companions or [[] for _ in results]
    # the job's output images as A1111 lists them: each result, then its returned mask outputs (no infotext);
    # and its saved files: each result, then its saved mask outputs (named after it, with its infotext)
    outputs: list[Image.Image] = []
    texts: list[str | None] = []
    saves: list[tuple[Image.Image, str, str, int]] = []  # image, infotext, suffix, job position
    for i, (img, text, extra) in enumerate(zip(results, result.infotexts, companions, strict=True)):
        outputs.append(img)
        texts.append(text)
        saves.append((img, text, "", i))
        for c in extra:
            if c.returned:
                outputs.append(c.image)
                texts.append(None)
            if c.saved:
                saves.append((c.image, text, c.suffix, i))
    # what file-name patterns read (A1111's processing object at save time)
    job = svc.job_facts(result.info, opts, int(getattr(req, "n_iter", 1) or 1))
    # A1111 saves an API job's images when the request asks and the option samples_save is on
    wanted = req.save_images and opts.get("samples_save", True)
    if wanted and (not incomplete or opts["save_incomplete_images"]):
        if result.extra_saves:  # A1111 writes them as they come: the first passes before the final images
            svc.save_images([e[0] for e in result.extra_saves], [e[1] for e in result.extra_saves], fmt,
                            save_options, [e[2] for e in result.extra_saves], job,
                            _extra_indices(result.extra_saves))
        # ControlNet's detected maps (after the results, without infotexts) are not saved, as the extension
        svc.save_images([s[0] for s in saves], [s[1] for s in saves], fmt, save_options,
                        [s[2] for s in saves], job, [s[3] for s in saves])
    if grid_wanted(opts, req.save_images, len(outputs)):  # A1111's API: only with save_images
        grid = image_grid(outputs, int(getattr(req, "batch_size", 1) or 1), opts)
        first = result.infotexts[0]
        if opts.get("grid_save", True):
            save_grid(svc.config.outputs_dir, grid, first, save_options, svc.encoder(save_options, first),
                      job, count)
        if opts.get("return_grid", True):
            outputs.insert(0, grid)
            texts.insert(0, first)
            result.infotexts = [first, *result.infotexts]
            result.info = {**result.info, "infotexts": [first, *result.info.get("infotexts", [])],
                           "index_of_first_image": 1}
    result.images = outputs + later
    if not req.send_images:
        return []
    chunks: list[dict[str, str] | None] = [None if t is None else {"parameters": t} if opts["enable_pnginfo"]
                                           else {} for t in texts]
    chunks += [None] * len(later)
    return encode_images_b64(result.images, fmt, text_chunks=chunks, jpeg_quality=opts["jpeg_quality"],
                             compress_level=svc.config.png_compress_level,
                             webp_lossless=bool(opts.get("webp_lossless", False)))


def _extra_indices(extra_saves: list[tuple[Any, str, str]]) -> list[int]:
    """The job position of each extra save: the k-th one with a given suffix is a copy of image k."""
    seen: dict[str, int] = {}
    out = []
    for _, _, suffix in extra_saves:
        out.append(seen.get(suffix, 0))
        seen[suffix] = out[-1] + 1
    return out


async def run_generation(svc: Services, request: Request, job: PreparedJob) -> tuple[JobResult, list[str]]:
    """The common end of txt2img and img2img, after the request is prepared: the checks of
    `check_generation`, the job on the worker as task `force_task_id`, then `finish_generation`. Returns
    the result and the base64 images."""
    req = job.req
    await run_in_threadpool(check_generation, svc, req, job.p, job.script_args)
    result, incomplete = await run_on_worker(svc, request, job.name, generation_job(svc, job.p),
                                             finish_if_gone=req.save_images, task_id=req.force_task_id,
                                             remote=GenerationCall(job.p))
    images = await run_in_threadpool(finish_generation, svc, req, result, incomplete, job.opts,
                                     job.save_options)
    return result, images


def json_response(model: BaseModel) -> Response:
    """`model` as a JSON response, serialised by pydantic straight to bytes. For the routes that answer with
    base64 images (megabytes of text), FastAPI's own path (`response_model` validation, a Python dict, then
    `json.dumps`) took 26 ms for one 2048x2048 image's body, this 5-9 ms. Same keys, same order; the route
    keeps its `response_model` for the OpenAPI document."""
    return Response(TypeAdapter(type(model)).dump_json(model), media_type="application/json")
