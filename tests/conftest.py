"""Shared session fixtures: the builtin tiny model behind a ModelManager, an upscaler registry with only the
built-ins, tiny SD1/SDXL single-file checkpoints in a models folder, and `Env.run`, which takes a txt2img
request through `prepare` and `run_txt2img` exactly as the server does (minus HTTP).

Everything is built once per session with fixed seeds; nothing downloads."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.jobs.common import JobContext, JobResult
from pipeline.jobs.extensions import Extensions
from pipeline.jobs.pixel_upscale import HiresUpscaler
from pipeline.jobs.processing import Processing, prepare
from pipeline.jobs.txt2img import run_txt2img
from pipeline.models.builtin import BUILTIN_NAME
from pipeline.models.checkpoints import CheckpointRegistry
from pipeline.models.manager import ModelManager
from pipeline.runtime.job_state import JobState
from schemas.txt2img import Txt2ImgRequest
from upscalers.registry import UpscalerRegistry

BASE_OPTIONS: dict[str, Any] = {"sd_model_checkpoint": "", "CLIP_stop_at_last_layers": 1,
                                "show_progress_every_n_steps": 2, "live_previews_enable": True}
MAX_PIXELS = 4096 * 4096
# Small and fast defaults for a hires job on the builtin model; tests override what they check.
FAST = {"prompt": "a cat", "steps": 4, "width": 64, "height": 64, "seed": 1234, "cfg_scale": 7.0,
        "sampler_name": "Euler", "denoising_strength": 0.5}


@dataclass
class Env:
    """A ModelManager + upscaler registry + job state, and a one-call way to run a txt2img request."""

    models: ModelManager
    upscalers: UpscalerRegistry
    state: JobState = field(default_factory=JobState)
    options: dict[str, Any] = field(default_factory=lambda: dict(BASE_OPTIONS))

    def prepare(self, options: dict[str, Any] | None = None, firstpass_image: Image.Image | None = None,
                **fields: Any) -> Processing:
        req = Txt2ImgRequest(**{**FAST, **fields})
        return prepare(req, {**self.options, **(options or {})}, self.models, self.upscalers, MAX_PIXELS,
                       firstpass_image)

    def run_p(self, p: Processing, extensions: Extensions | None = None) -> JobResult:
        ctx = JobContext(self.models, HiresUpscaler(self.upscalers, p.options), extensions or Extensions(), self.state)
        try:
            return run_txt2img(p, ctx)
        finally:
            self.state.end()  # what the worker does after every job

    def run(self, extensions: Extensions | None = None, options: dict[str, Any] | None = None,
            firstpass_image: Image.Image | None = None, **fields: Any) -> JobResult:
        return self.run_p(self.prepare(options, firstpass_image, **fields), extensions)

    def model(self, name: str = ""):
        return self.models.get(self.models.resolve_title(name, "sd_model_checkpoint"))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def infotext_params(text: str) -> dict[str, str]:
    """The `Key: value` pairs written on an infotext's last line, in order, JSON-quoted values unquoted
    (only the keys actually written: no A1111 defaults filled in)."""
    from pipeline.infotext.codec import _PARAM_ITEM, unquote_value

    out: dict[str, str] = {}
    for key, value in _PARAM_ITEM.findall(text.strip().rsplit("\n", 1)[-1]):
        out[key.strip()] = unquote_value(value) if value[:1] == '"' and value[-1:] == '"' else value
    return out


class UnetCounter:
    """Counts UNet evaluations (each forward on a CFG batch counts once) per model, recording the
    timestep of each call; optional `on_call(n, timestep)` runs before call n (1-based) of the job."""

    def __init__(self, on_call: Callable[[int, float], None] | None = None) -> None:
        self.calls: list[tuple[str, float]] = []
        self.on_call = on_call

    def hook(self, tag: str):
        def pre(_module: Any, args: tuple, kwargs: dict) -> None:
            t = args[1] if len(args) > 1 else kwargs["timestep"]
            t = float(t.flatten()[0]) if torch.is_tensor(t) else float(t)
            self.calls.append((tag, t))
            if self.on_call is not None:
                self.on_call(len(self.calls), t)
        return pre

    def count(self, tag: str | None = None) -> int:
        return sum(1 for g, _ in self.calls if tag is None or g == tag)


@contextmanager
def count_unet(*models: Any, on_call: Callable[[int, float], None] | None = None,
               tags: list[str] | None = None) -> Iterator[UnetCounter]:
    counter = UnetCounter(on_call)
    handles = [m.unet.register_forward_pre_hook(counter.hook(tag), with_kwargs=True)
               for m, tag in zip(models, tags or [str(i) for i in range(len(models))], strict=True)]
    try:
        yield counter
    finally:
        for h in handles:
            h.remove()


@contextmanager
def count_vae(model: Any) -> Iterator[dict[str, int]]:
    """Counts VAE encoder/decoder module calls (per tile when tiled)."""
    counts = {"encode": 0, "decode": 0}

    def bump(key: str):
        def pre(*_: Any) -> None:
            counts[key] += 1
        return pre

    handles = [model.vae.encoder.register_forward_pre_hook(bump("encode")),
               model.vae.decoder.register_forward_pre_hook(bump("decode"))]
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    """The builtin model only (an empty models folder), built-in upscalers only."""
    root = tmp_path_factory.mktemp("models-empty")
    registry = CheckpointRegistry(root, root / "data")
    mm = ModelManager(registry, torch.device("cpu"), torch.float32)
    return Env(mm, UpscalerRegistry(root))


@pytest.fixture(scope="session")
def builtin_model(env: Env):
    return env.model()


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A models folder holding tiny single-file checkpoints in the LDM layout users keep: `tiny-sd1.safetensors`,
    `tiny-sd1-inpaint.safetensors` (9 input channels) and `tiny-sdxl.safetensors`. They load like any user's
    file: the loader reads their architecture from the tensors."""
    from tests.fixtures.tinymodels import build_tiny_sd1, build_tiny_sdxl

    root = tmp_path_factory.mktemp("models-tiny")
    work = tmp_path_factory.mktemp("tiny-build")
    folder = root / "Stable-diffusion"
    build_tiny_sd1(work, seed=7).write_safetensors(folder / "tiny-sd1.safetensors")
    build_tiny_sd1(work, seed=17, in_channels=9).write_safetensors(folder / "tiny-sd1-inpaint.safetensors")
    build_tiny_sdxl(work).write_safetensors(folder / "tiny-sdxl.safetensors")
    return {"root": root, "sd1": "tiny-sd1.safetensors", "sdxl": "tiny-sdxl.safetensors",
            "sd1_inpaint": "tiny-sd1-inpaint.safetensors", "builtin": BUILTIN_NAME}


@pytest.fixture(scope="session")
def tiny_env(tiny_checkpoints: dict[str, Any]) -> Env:
    """Builtin + tiny SD1 + tiny SDXL, two models kept loaded (so a hires checkpoint switch needs no reload)."""
    root = tiny_checkpoints["root"]
    registry = CheckpointRegistry(root, root / "data")
    mm = ModelManager(registry, torch.device("cpu"), torch.float32, max_loaded=2)
    return Env(mm, UpscalerRegistry(root))
